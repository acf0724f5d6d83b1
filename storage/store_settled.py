"""An existing store that no writer needs to open: its committed manifest, without Zarr.

An unchanged precompute (the scheduled retrain's usual case) would otherwise import Zarr
and numpy and open every array only to find nothing to do (~0.3 s of a ~2.5 s command).
`open_settled` answers under the writer's own lock (so a busy store is refused exactly as
the writer refuses it) with the committed manifest when the store is settled: the last
writer's finalize completed (rows trimmed, statistics, attributes, compaction; see
`Manifest.settled`) and no writer has opened it since, it has no other generation of arrays
left to delete, every chunk holding a committed row is stored, and the run's mel overrides
are the store's own. Anything else, or any doubt, is None: the caller opens the writer,
which repairs, refuses or reports in one line as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.store_backend import LocalBackend, Lock, backend_for
from storage.store_errors import StoreError
from storage.store_manifest import Manifest, read_manifest
from storage.store_mel_config import resolve_mel_config
from storage.store_names import MANIFEST_FILE
from storage.store_summary import stored_chunk_rows


def open_settled(path: str | Path, mel: dict[str, Any] | None
                 ) -> tuple[Manifest, Lock] | None:
    """(committed manifest, the held writer lock: release it) of a settled local store,
    else None. StoreBusyError (a StoreError) when another writer holds the store."""
    be = backend_for(path)
    if not isinstance(be, LocalBackend) or not (be.path / MANIFEST_FILE).is_file():
        return None  # (the lock would make the directory of a store yet to be made)
    lock = be.writer_lock().acquire()
    try:
        manifest = _settled(be, mel)  # again, under the lock: it stands until released
    except BaseException:
        lock.release()
        raise
    if manifest is None:
        lock.release()
        return None
    return manifest, lock


def _settled(be: LocalBackend, mel: dict[str, Any] | None) -> Manifest | None:
    try:
        m = read_manifest(be)
        if (m is not None and m.settled > 0 and m.settled == m.commits
                and be.generations() == {m.generation}
                and resolve_mel_config(m.mel, mel, be.path) == m.mel_config
                and stored_chunk_rows(be.path, m) is not None):
            return m
    except (StoreError, OSError, ValueError, KeyError, TypeError, IndexError):
        pass  # refused or unreadable: the writer says why, in one line
    return None
