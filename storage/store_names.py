"""The names a mel store's files go by, and its size on disk: plain Python, no Zarr.

Kept apart from `storage.store_layout` (chunking, codecs, reads: needs Zarr and numpy) so
that what only reads the manifest (`audio-wgan store-info`, `storage.store_summary`)
starts without importing Zarr.
"""

from __future__ import annotations

import os
from pathlib import Path

from storage.store_location import is_url, url_bytes

# the arrays of one generation (a generation's arrays live under `gen<g>/`, see
# storage.store_generations): float16 rows, their class, source file id, offset, sums
MELS, LABELS, SOURCE, OFFSET, MEL_SUMS = "mels", "labels", "source", "offset", "mel_sums"
ARRAY_NAMES = (MELS, LABELS, SOURCE, OFFSET, MEL_SUMS)
MANIFEST_FILE = "manifest.json"  # the committed manifest (storage.store_manifest)


def disk_bytes(path: str | Path) -> int:
    """Bytes of every file under `path` (a store, with any old generations it still has);
    of every object under the prefix of a store URL."""
    if is_url(path):
        return url_bytes(str(path))
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                total += os.stat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total
