"""How a mel store lays its rows out on disk, shared by its reader and its writer.

Both `storage.mel_store` (read side) and `storage.store_writer` (write side) import this
module and never each other: the arrays of one generation, their chunking and codecs,
the per-row sums the statistics come from, and the chunk-aligned reads both sides make
(training reads, statistics, the compaction copy).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from gan.mel_config import MelConfig
from storage.store_integrity import read_checked
from storage.store_names import (  # noqa: F401  (the layout's names, re-exported)
    ARRAY_NAMES,
    LABELS,
    MANIFEST_FILE,
    MEL_SUMS,
    MELS,
    OFFSET,
    SOURCE,
    disk_bytes,
)

if TYPE_CHECKING:
    import torch

CHUNK_BYTES = 1 << 20  # mel chunks of at least 1 MiB (uncompressed): few, large files
INDEX_CHUNK_ROWS = 1 << 14  # small: each batch rewrites the last chunk of the index arrays
SUMS_CHUNK_ROWS = 256  # 512 KiB at 128 mels
# Measured on ESC-10/FSDD log-mels (one core): zstd level 1 + byte shuffle compresses
# 1.78x / 8.8x at ~360 MB/s; level 3 gains 4-5% size at 2.5x the encoding time, and bit
# shuffle is both larger and slower to decode. Precompute is CPU bound, so level 1.
MEL_CLEVEL = 1
# Blosc splits a chunk into blocks compressed separately; 1 MiB blocks (a whole chunk) encode
# 1.4x (FSDD) / 1.6x (ESC-10) faster than Blosc's automatic size and compress 6-9% smaller.
MEL_BLOCKSIZE = 1 << 20


def rows_per_chunk(cfg: MelConfig) -> int:
    """Rows per mel chunk so that one chunk holds at least CHUNK_BYTES of float16."""
    return max(1, math.ceil(CHUNK_BYTES / (cfg.n_mels * cfg.frames * 2)))


def create_arrays(group: zarr.Group, prefix: str, cfg: MelConfig, rows: int = 0) -> None:
    """The arrays of one generation (`prefix` "" or "gen<g>/"), `rows` long."""
    rpc = rows_per_chunk(cfg)
    blosc = BloscCodec(cname="zstd", clevel=MEL_CLEVEL, shuffle="shuffle",
                       blocksize=MEL_BLOCKSIZE)
    group.create_array(prefix + MELS, shape=(rows, cfg.n_mels, cfg.frames),
                       chunks=(rpc, cfg.n_mels, cfg.frames), dtype="float16",
                       compressors=blosc, fill_value=0, overwrite=True)
    int_codec = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")
    for name, dtype in ((LABELS, "int32"), (SOURCE, "int32"), (OFFSET, "int64")):
        group.create_array(prefix + name, shape=(rows,), chunks=(INDEX_CHUNK_ROWS,),
                           dtype=dtype, compressors=int_codec, fill_value=-1, overwrite=True)
    group.create_array(prefix + MEL_SUMS, shape=(rows, 2, cfg.n_mels),
                       chunks=(SUMS_CHUNK_ROWS, 2, cfg.n_mels), dtype="float64",
                       compressors=int_codec, fill_value=0.0, overwrite=True)


def mel_sums(mels: np.ndarray | torch.Tensor) -> np.ndarray:
    """float64 (K, 2, n_mels): per-bin sums over frames of the float16 values and squares.

    Squares of float16 values are exact in float32 (11-bit significands); torch's
    pairwise float32 sums over a row's frames are within ~1e-6 relative, far below what
    per-bin statistics need, and ~2x faster than float64 numpy on the precompute path.
    (torch is imported here: readers such as `store-info` never need it.)
    """
    import torch

    x = torch.as_tensor(mels).to(torch.float16).float()
    return torch.stack([x.sum(dim=2), x.square().sum(dim=2)], dim=1).double().numpy()


def stats_from_sums(sums: zarr.Array, phys_sorted: np.ndarray, n_mels: int, frames: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean, std, count) per mel bin in float64 over the physical rows `phys_sorted`
    (sorted), from the stored `mel_sums`: a small read instead of a pass over the mels."""
    if len(phys_sorted) == 0:
        return np.zeros(n_mels), np.ones(n_mels), 0
    total = np.zeros((2, n_mels), dtype=np.float64)
    step = 1 << 16
    for i in range(0, len(phys_sorted), step):
        total += read_checked(sums, phys_sorted[i:i + step]).sum(axis=0)
    count = len(phys_sorted) * frames
    mean = total[0] / count
    var = np.maximum(total[1] / count - mean ** 2, 0.0)
    return mean, np.sqrt(var), count


def block_bounds(phys_sorted: np.ndarray, block: int) -> list[tuple[int, int]]:
    """[lo, hi) positions in the sorted physical rows `phys_sorted` of each group that lies
    in one aligned block of `block` physical rows (each group is read with one slice)."""
    if len(phys_sorted) == 0:
        return []
    cuts = np.flatnonzero(np.diff(phys_sorted // block)) + 1
    return list(zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(phys_sorted)].tolist(),
                    strict=True))


def read_physical(arr: zarr.Array, phys_sorted: np.ndarray) -> np.ndarray:
    """The rows `phys_sorted` (sorted, non-empty) of `arr`, read in contiguous slices (dead
    rows in between are read and dropped: cheaper than decompressing chunks twice). A chunk
    that holds none of the rows is never read, so the live rows around a damaged chunk of
    dead ones can still be copied."""
    return read_checked(arr, phys_sorted, dense=True)
