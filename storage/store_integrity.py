"""Damage detection for the mel store: a chunk a reader needs is there and decodes, or the
read fails with one line naming the array and rows (never zeros for a missing chunk,
never a raw Blosc traceback); `verify` checks every chunk against checksums kept in the
manifest.

The checksums are CRC-32 of each chunk's committed rows as decoded values (not of the
compressed chunk file). Rows are append-only, so a chunk's checksum is extended with each
batch's rows as they are written, without reading anything back, and a chunk that a killed
precompute rewrote with extra uncommitted rows still verifies while its committed rows are
intact. Stores made before checksums existed carry none: their chunks are checked for
presence and decoding only.
"""

from __future__ import annotations

import asyncio
import math
import os
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.storage import LocalStore

from storage.store_errors import StoreError

Checksums = dict[str, list[int | None]]  # array name -> CRC-32 per chunk (None: unknown)


@dataclass(frozen=True)
class Damage:
    """One damaged chunk: which array, which physical rows, what is wrong."""

    array: str
    chunk: int
    rows: tuple[int, int]  # [first, last] physical rows
    problem: str

    def describe(self) -> str:
        return f"chunk {self.chunk} of {self.array} (rows {self.rows[0]}-{self.rows[1]}) " \
               f"{self.problem}"


@dataclass
class VerifyReport:
    damaged: list[Damage] = field(default_factory=list)
    chunks: int = 0  # chunks checked
    without_checksum: int = 0  # decoded, but the manifest holds no checksum for them

    def to_dict(self) -> dict[str, Any]:
        return {"ok": not self.damaged, "chunks": self.chunks,
                "without_checksum": self.without_checksum,
                "damaged": [asdict(d) for d in self.damaged]}


def store_root(arr: zarr.Array) -> str:
    """The store's directory, or its URL on an object store (FsspecStore)."""
    st = arr.store
    if getattr(st, "root", None) is not None:
        return str(st.root)
    fs, path = getattr(st, "fs", None), getattr(st, "path", None)
    return fs.unstrip_protocol(path) if fs is not None and path is not None else str(st)


def chunk_rows(arr: zarr.Array) -> int:
    return int(arr.chunks[0])


def _chunk_path(arr: zarr.Array, i: int) -> str:
    key = arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))
    return f"{arr.path}/{key}" if arr.path else key


def chunk_exists(arr: zarr.Array, i: int) -> bool:
    """Whether chunk `i` (along the rows) is stored; a stat on a local store."""
    return chunks_exist(arr, [i])[0]


def chunks_exist(arr: zarr.Array, chunk_ids: list[int]) -> list[bool]:
    """Whether each chunk is stored: a stat each on a local store, concurrent requests on
    any other (an object store)."""
    keys = [_chunk_path(arr, int(i)) for i in chunk_ids]
    if isinstance(arr.store, LocalStore):
        return [os.path.isfile(os.path.join(arr.store.root, k)) for k in keys]

    async def exist_all() -> list[bool]:
        return list(await asyncio.gather(*(arr.store.exists(k) for k in keys)))

    return [bool(x) for x in sync(exist_all())]


def damage_error(arr: zarr.Array, d: Damage) -> StoreError:
    root = store_root(arr)
    return StoreError(f"mel store {root} is damaged: {d.describe()}; `audio-wgan compact "
                      f"--drop-damaged {root}` drops the rows of damaged chunks and re-queues "
                      "their files for the next precompute")


def _damage(arr: zarr.Array, i: int, problem: str) -> Damage:
    c = chunk_rows(arr)
    return Damage(arr.path, int(i), (int(i) * c, min((int(i) + 1) * c, arr.shape[0]) - 1),
                  problem)


def require_chunks(arr: zarr.Array, chunk_ids: Any) -> None:
    """StoreError (one line) for the first of `chunk_ids` that is not stored."""
    ids = [int(i) for i in chunk_ids]
    for i, there in zip(ids, chunks_exist(arr, ids), strict=True):
        if not there:
            raise damage_error(arr, _damage(arr, i, "is missing"))


def require_rows(arr: zarr.Array, rows: int) -> None:
    """Every chunk holding one of the first `rows` rows is stored (a stat per chunk)."""
    require_chunks(arr, range(math.ceil(rows / chunk_rows(arr))))


def read_checked(arr: zarr.Array, phys_sorted: np.ndarray, dense: bool = False) -> np.ndarray:
    """Rows `phys_sorted` (sorted) of `arr`; StoreError when a chunk they need is missing or
    does not decode. `dense` reads contiguous slices per run of chunks holding them (the
    rows in between are read and dropped), else the rows alone (orthogonal indexing)."""
    phys_sorted = np.asarray(phys_sorted, dtype=np.int64)
    if len(phys_sorted) == 0:
        return np.asarray(arr.oindex[phys_sorted])
    c = chunk_rows(arr)
    ids = phys_sorted // c
    require_chunks(arr, np.unique(ids))
    try:
        if not dense:
            return np.asarray(arr.oindex[phys_sorted])
        parts = []
        cuts = np.flatnonzero(np.diff(ids) > 1) + 1  # a chunk without any of the rows
        for lo, hi in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(ids)].tolist(),
                          strict=True):
            sel = phys_sorted[lo:hi]
            first, last = int(sel[0]), int(sel[-1])
            data = np.asarray(arr[first:last + 1])
            parts.append(data if len(data) == len(sel) else data[sel - first])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    except (StoreError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - a codec error: find the chunk that fails
        for i in np.unique(ids).tolist():
            try:
                arr[i * c:(i + 1) * c]
            except Exception as bad:  # noqa: BLE001
                raise damage_error(arr, _damage(arr, i, f"does not decode ({_line(bad)})")
                                   ) from None
        raise StoreError(f"mel store {store_root(arr)}: reading {arr.path} failed "
                         f"({_line(exc)})") from None


def as_stored(arr: zarr.Array, data: np.ndarray) -> np.ndarray:
    """`data` as the contiguous array of `arr`'s dtype whose bytes the checksums cover."""
    return np.ascontiguousarray(data, dtype=np.dtype(str(arr.dtype)))


def extend_checksums(crcs: list[int | None], rows_per_chunk: int, start: int,
                     data: np.ndarray) -> None:
    """Extend the per-chunk CRC-32s in `crcs` with rows `data` written at row `start`
    (right after the rows the CRCs cover). A chunk whose earlier rows have no CRC stays
    unknown."""
    end = start + len(data)
    need = math.ceil(end / rows_per_chunk)
    if len(crcs) < need:
        crcs.extend([None] * (need - len(crcs)))
    pos = start
    while pos < end:
        i = pos // rows_per_chunk
        stop = min((i + 1) * rows_per_chunk, end)
        prev = 0 if pos == i * rows_per_chunk else crcs[i]
        crcs[i] = None if prev is None else zlib.crc32(data[pos - start:stop - start], prev)
        pos = stop


def verify_arrays(arrays: dict[str, zarr.Array], rows: int, checksums: Checksums | None
                  ) -> VerifyReport:
    """Check every chunk holding one of the first `rows` rows of each array: stored,
    decodes, and matches its checksum when the manifest has one. Reads one chunk at a
    time."""
    rep = VerifyReport()
    for name, arr in arrays.items():
        c = chunk_rows(arr)
        crcs = (checksums or {}).get(name) or []
        for i in range(math.ceil(rows / c)):
            rep.chunks += 1
            lo, hi = i * c, min((i + 1) * c, rows)
            if not chunk_exists(arr, i):
                rep.damaged.append(_damage(arr, i, "is missing"))
                continue
            try:
                data = np.asarray(arr[lo:hi])
            except Exception as exc:  # noqa: BLE001 - any codec error is damage
                rep.damaged.append(_damage(arr, i, f"does not decode ({_line(exc)})"))
                continue
            want = crcs[i] if i < len(crcs) else None
            if want is None:
                rep.without_checksum += 1
            elif zlib.crc32(as_stored(arr, data)) != want:
                rep.damaged.append(_damage(arr, i, "does not match its checksum"))
    return rep


def damaged_files(manifest: Any, damaged: list[Damage]) -> set[str]:
    """Paths of the manifest's kept files with a row in one of the `damaged` chunks."""
    hit = set()
    for e in manifest.files.values():
        if any(e.start <= d.rows[1] and e.stop > d.rows[0] for d in damaged):
            hit.add(e.path)
    return hit


def _line(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())[:200]
