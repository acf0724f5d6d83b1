"""Read side of the Zarr v3 log-mel store that precompute writes and training reads.

Layout of `<store>/` (a Zarr v3 group; chunking and codecs in `storage.store_layout`, which
the writer imports too):

- `mels`    float16 (rows, n_mels, frames), chunked along rows in >= 1 MiB blocks,
            Blosc/Zstd (level 1) with byte shuffle;
- `labels`  int32 (rows,) class index; `source` int32 (rows,) manifest file id;
  `offset`  int64 (rows,) segment start in samples at the store's sample rate;
- `mel_sums` float64 (rows, 2, n_mels): per row and mel bin, the sum over frames of the
            stored float16 values and of their squares, so the normalisation statistics
            of any set of live rows cost a small read instead of a pass over every mel;
- `manifest.json` the committed manifest (see `storage.store_manifest`): which physical
  rows are live, the mel config, class names, files with hashes, rejected files, the
  normalisation statistics and a checksum per chunk. The group attributes mirror it for
  other Zarr tools.

Rows are append-only: a replaced or deleted source file's rows become dead (no longer owned
by the manifest) but are never rewritten, so a reader is safe while a writer appends.
Compaction drops dead rows by copying the live ones into a new generation of the arrays
(`gen<g>/`, see `storage.store_generations`); an open `MelStore` holds a lease on its
generation, so the arrays it reads are not deleted under it (on object storage, where
readers write nothing, old generations are kept for a grace period instead:
`storage.store_object`). The same reader serves a directory or an `s3://` URL
(`storage.store_backend`).
Live rows are served in canonical order (source path, then offset), which does not depend
on the order or the interruptions in which the store was built. A lost chunk is refused at
open and a chunk that does not decode at read, in one line naming the array and rows
(`storage.store_integrity`); `verify` also checks every chunk against its checksum.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from gan.errors import one_line
from gan.mel_config import MelConfig
from storage.store_backend import Lock, StoreBackend, backend_for
from storage.store_errors import StoreError
from storage.store_generations import generation_prefix
from storage.store_integrity import damaged_files, read_checked, require_rows, verify_arrays
from storage.store_layout import (
    ARRAY_NAMES,
    LABELS,
    MEL_SUMS,
    MELS,
    OFFSET,
    SOURCE,
    block_bounds,
    disk_bytes,
    mel_sums,
    read_physical,
    rows_per_chunk,
    stats_from_sums,
)
from storage.store_location import beside_store
from storage.store_manifest import (
    FileEntry,
    Manifest,
    leased_manifest,
    read_manifest,
)
from storage.store_summary import (  # noqa: F401  (store-info's text, re-exported)
    describe,
    describe_verify,
    safe_text,
    summary_fields,
    to_json,
    verify_summary,
)

# the layout's names are re-exported for the code and tests that import them from here
__all__ = ["LABELS", "MEL_SUMS", "MELS", "MelStore", "OFFSET", "SOURCE", "StoreError",
           "block_bounds", "disk_bytes", "mel_sums", "read_physical", "rows_per_chunk"]
STATS_BLOCK_ROWS = 64  # rows per float64 block when computing statistics (~16 MB at 128x256)


class MelStore:
    """Read-only view of the committed rows of a mel store.

    Open with `MelStore.open(path)`; the view is a snapshot of the manifest at open time.
    It holds a lease on the arrays it reads until `close()` (or until it is garbage
    collected), so that a compaction meanwhile keeps them.
    """

    def __init__(self, path: Path | str, manifest: Manifest, group: zarr.Group,
                 lease: Lock | None = None, backend: StoreBackend | None = None) -> None:
        self.backend = backend or backend_for(path)
        self.path = self.backend.path  # a Path, or the URL of an object store
        self.manifest = manifest
        self.classes: list[str] = list(manifest.classes)
        self.mel_config: MelConfig = manifest.mel_config
        self.fingerprint: str = manifest.fingerprint()
        self._lease = lease
        self._group = group
        prefix = generation_prefix(manifest.generation)
        self._mels = group[prefix + MELS]
        self._offsets_arr = group[prefix + OFFSET]
        self._sums_arr = group[prefix + MEL_SUMS]
        self._chunk_rows = int(self._mels.chunks[0])
        entries = manifest.live_entries()
        self._entries = entries
        counts = np.array([e.n_rows for e in entries], dtype=np.int64)
        self._entry_of_row = np.repeat(np.arange(len(entries), dtype=np.int64), counts)
        starts = np.array([e.start for e in entries], dtype=np.int64)
        first = np.cumsum(counts) - counts
        # physical row of each live row
        self._phys = (np.repeat(starts - first, counts)
                      + np.arange(int(counts.sum()), dtype=np.int64))
        self._labels = np.repeat(np.array([e.label for e in entries], dtype=np.int64), counts)
        self._stats: tuple[np.ndarray, np.ndarray] | None = None
        if manifest.rows > self._mels.shape[0]:
            raise StoreError(f"store {path} is damaged: the manifest owns {manifest.rows} rows "
                             f"but the mels array has {self._mels.shape[0]}")
        cfg = manifest.mel_config
        if tuple(self._mels.shape[1:]) != (cfg.n_mels, cfg.frames):
            raise StoreError(f"store {path} is damaged: its manifest's mel configuration "
                             f"({cfg.n_mels} mels x {cfg.frames} frames) is not the mels "
                             f"array's rows {tuple(self._mels.shape[1:])}")

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | Path | StoreBackend, check: bool = True) -> MelStore:
        """Open the committed state of the store at `path` (StoreError if there is none).

        With `check`, every chunk holding a committed row must be stored (a stat each), so
        a store with a lost chunk is refused at once rather than read as zeros; whether
        chunks decode and match their checksums is `verify`'s job (and every read's).
        """
        be = backend_for(path)
        p = be.path
        manifest, lease = leased_manifest(be)
        try:
            group = zarr.open_group(be.zarr_store(read_only=True), mode="r",
                                    use_consolidated=False)
            store = cls(p, manifest, group, lease, backend=be)
            if check:
                for arr in store._arrays().values():
                    require_rows(arr, manifest.rows)
            return store
        except (KeyError, FileNotFoundError, ValueError) as exc:
            lease.release()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"store {p} is damaged: {one_line(exc)}") from None
        except BaseException:
            lease.release()
            raise

    @property
    def location(self) -> str:
        """Where the store lives, as another process opens it: an absolute path, or the
        URL of an object store (`str(Path(url))` would mangle `s3://`)."""
        return self.backend.location

    def close(self) -> None:
        """Release the lease on the arrays (a later compaction may then delete them); reads
        after this raise StoreError instead of serving arrays that may be gone."""
        if self._lease is not None:
            self._lease.release()
        self._mels = self._offsets_arr = self._sums_arr = _Closed(self.path)

    def __enter__(self) -> MelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- damage
    def _arrays(self) -> dict[str, zarr.Array]:
        if isinstance(self._mels, _Closed):
            raise StoreError(f"store {self.path} was closed")
        prefix = generation_prefix(self.manifest.generation)
        return {name: self._group[prefix + name] for name in ARRAY_NAMES}

    def verify(self) -> dict[str, Any]:
        """Check every chunk of the committed rows: stored, decodes, matches the checksum
        the manifest keeps for it (stores made before checksums: decoding only). Lists the
        damaged chunks and the kept files with rows in them."""
        rep = verify_arrays(self._arrays(), self.manifest.rows, self.manifest.checksums)
        out = rep.to_dict()
        out["files"] = sorted(damaged_files(self.manifest, rep.damaged))
        return out

    def verify_once(self) -> None:
        """`verify`, once per committed state (fingerprint, generation, commit count),
        remembered by a marker in `<store>.verified/`; StoreError (one line, as
        `store-info --verify` ends) when a chunk is damaged. Training checks this first,
        so it does not run on chunks damaged before it was verified (damage after that
        is found by the next state's verify, or `store-info --verify`)."""
        m = self.manifest
        marker = (beside_store(self.location, "verified")
                  / f"{self.fingerprint[:24]}-g{m.generation}-c{m.commits}")
        if marker.is_file():
            return
        report = self.verify()
        if not report["ok"]:
            raise StoreError(verify_summary(self.location, report))
        try:  # a read-only place (a shared data set): verified again next time, that is all
            marker.parent.mkdir(parents=True, exist_ok=True)
            for old in marker.parent.iterdir():
                if old.name != marker.name:
                    old.unlink(missing_ok=True)
            marker.touch()
        except OSError:
            pass

    # ---------------------------------------------------------------- metadata
    def __len__(self) -> int:
        return len(self._phys)

    def __repr__(self) -> str:
        return (f"MelStore({str(self.path)!r}, rows={len(self)}, classes={self.classes}, "
                f"fingerprint={self.fingerprint[:12]})")

    @property
    def row_shape(self) -> tuple[int, int]:
        return (self.mel_config.n_mels, self.mel_config.frames)

    def labels(self) -> np.ndarray:
        """int64 (N,) class index of each live row."""
        return self._labels.copy()

    def row_sources(self) -> list[str]:
        """Source file (relative to DATA_DIR) of each live row, e.g. for splits by file."""
        paths = [e.path for e in self._entries]
        return [paths[i] for i in self._entry_of_row]

    def offsets(self) -> np.ndarray:
        """int64 (N,) start of each live row's segment, in samples at the store's rate."""
        out = np.zeros(len(self), dtype=np.int64)
        if len(self):
            order = np.argsort(self._phys)
            out[order] = np.asarray(self._read(self._offsets_arr, self._phys[order]),
                                    dtype=np.int64)
        return out

    def files(self) -> list[FileEntry]:
        """Kept source files in path order."""
        return list(self._entries)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self._labels.tolist())
        return {name: int(counts.get(i, 0)) for i, name in enumerate(self.classes)}

    def nbytes_live(self) -> int:
        """Bytes of the live rows as float16 (what `load` needs)."""
        return len(self) * self.mel_config.n_mels * self.mel_config.frames * 2

    def disk_bytes(self) -> int:
        return self.backend.disk_bytes()

    # ---------------------------------------------------------------- statistics
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-mel-bin mean and std (float32, (n_mels,)) over all live rows and frames.

        Served from the manifest when they were computed for this fingerprint; otherwise
        (an interrupted run) computed now from the stored float16 values.
        """
        if self._stats is None:
            s = self.manifest.stats
            if s and s.get("fingerprint") == self.fingerprint:
                self._stats = (np.asarray(s["mean"], dtype=np.float32),
                               np.asarray(s["std"], dtype=np.float32))
            else:
                mean, std, _ = self.compute_stats()
                self._stats = (mean.astype(np.float32), std.astype(np.float32))
        return self._stats[0].copy(), self._stats[1].copy()

    def compute_stats(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(mean, std, count) per mel bin in float64 over the live rows (from `mel_sums`)."""
        return stats_from_sums(self._sums_arr, np.sort(self._phys), self.mel_config.n_mels,
                               self.mel_config.frames)

    def compute_stats_full(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The same statistics from a pass over every live mel (merging blocks as in
        Chan et al.); slower, kept to verify `compute_stats`."""
        n_mels = self.mel_config.n_mels
        mean = np.zeros(n_mels, dtype=np.float64)
        m2 = np.zeros(n_mels, dtype=np.float64)
        count = 0
        for _, rows in self._iter_physical(np.sort(self._phys), STATS_BLOCK_ROWS):
            x = rows.astype(np.float64)
            nb = x.shape[0] * x.shape[2]
            mb = x.mean(axis=(0, 2))
            m2b = ((x - mb[None, :, None]) ** 2).sum(axis=(0, 2))
            delta = mb - mean
            tot = count + nb
            mean = mean + delta * (nb / tot)
            m2 = m2 + m2b + delta ** 2 * (count * nb / tot)
            count = tot
        std = np.sqrt(m2 / count) if count else np.ones(n_mels)
        return mean, std, count

    # ---------------------------------------------------------------- reading
    def load(self, max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All live rows: (mels float16 (N, n_mels, frames) in dB, labels int64 (N,)).

        Raises StoreError when they need more than `max_bytes` (stream with iter_batches).
        """
        need = self.nbytes_live()
        if max_bytes is not None and need > max_bytes:
            raise StoreError(f"store {self.path} needs {need / 1e6:.1f} MB in memory, over the "
                             f"{max_bytes / 1e6:.1f} MB budget; stream it with iter_batches")
        out = np.empty((len(self), *self.row_shape), dtype=np.float16)
        order = np.argsort(self._phys, kind="stable")
        pos = 0
        for n, rows in self._iter_physical(self._phys[order], 8 * self._chunk_rows):
            out[order[pos:pos + n]] = rows
            pos += n
        return out, self.labels()

    def read_rows(self, idx: np.ndarray | list[int]) -> np.ndarray:
        """float16 rows (len(idx), n_mels, frames) by live-row index (any order, repeats ok)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"row index out of range for a store of {len(self)} rows")
        if idx.size == 0:
            return np.empty((0, *self.row_shape), dtype=np.float16)
        uniq, inverse = np.unique(self._phys[idx], return_inverse=True)
        rows = np.asarray(self._read(self._mels, uniq), dtype=np.float16)
        return rows[inverse.reshape(-1)]

    def iter_batches(self, batch_size: int, seed: int, epoch: int = 0,
                     chunk_rows: int | None = None, drop_last: bool = True,
                     window_rows: int | None = None, rows: np.ndarray | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Shuffled minibatches (mels float16 dB (B, n_mels, frames), labels int64 (B,)).

        Streams: the order of physical blocks of `chunk_rows` rows (default: the store's
        chunk) is shuffled, then rows are shuffled within a window of consecutive blocks of
        about `window_rows` rows (default max(4 * batch_size, 256)). Every live row appears
        once per epoch (bar a short last batch when `drop_last`). Memory is bounded by the
        window, not the store; the order depends only on (seed, epoch) and the store.
        `rows` (live row indices) restricts the epoch to those rows.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        block = int(chunk_rows or self._chunk_rows)
        if block <= 0:
            raise ValueError("chunk_rows must be positive")
        window_rows = int(window_rows or max(4 * batch_size, 256))
        order = np.argsort(self._phys, kind="stable")
        if rows is not None:  # only these live rows (e.g. training's part of the split)
            order = order[np.isin(order, np.asarray(rows, dtype=np.int64))]
        phys, labels = self._phys[order], self._labels[order]
        bounds = block_bounds(phys, block)
        rng = np.random.default_rng([int(seed), int(epoch)])
        bounds = [bounds[i] for i in rng.permutation(len(bounds))]
        carry_x = np.empty((0, *self.row_shape), dtype=np.float16)
        carry_y = np.empty(0, dtype=np.int64)
        i = 0
        while i < len(bounds):
            sel, total = [], 0
            while i < len(bounds) and (total < window_rows or not sel):
                lo, hi = bounds[i]
                sel.append(np.arange(lo, hi))
                total += hi - lo
                i += 1
            pick = np.sort(np.concatenate(sel))  # positions in the sorted arrays
            rows = np.asarray(self._read(self._mels, phys[pick]), dtype=np.float16)
            x = np.concatenate([carry_x, rows]) if len(carry_x) else rows
            y = np.concatenate([carry_y, labels[pick]])
            perm = rng.permutation(len(x))
            x, y = x[perm], y[perm]
            n_full = len(x) // batch_size * batch_size
            for s in range(0, n_full, batch_size):
                yield x[s:s + batch_size], y[s:s + batch_size]
            carry_x, carry_y = x[n_full:], y[n_full:]
        if len(carry_x) and not drop_last:
            yield carry_x, carry_y

    def _read(self, arr: zarr.Array, phys_sorted: np.ndarray, dense: bool = False
              ) -> np.ndarray:
        """read_checked, telling a reader whose generation a compaction's grace period has
        since let go (object stores: readers hold no lease) to reopen, not that the store is
        damaged."""
        try:
            return read_checked(arr, phys_sorted, dense=dense)
        except StoreError:
            if self.backend.kind == "object":
                try:
                    now = read_manifest(self.backend)
                except (StoreError, ValueError, KeyError, TypeError):
                    now = None
                if now is not None and now.generation != self.manifest.generation:
                    raise StoreError(
                        f"store {self.path} was compacted after this reader opened it, and "
                        "the arrays it read were deleted once the grace period "
                        "(AUDIO_WGAN_STORE_GRACE_S) passed; open the store again") from None
            raise

    def _iter_physical(self, phys_sorted: np.ndarray, block_rows: int
                       ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (n, rows) for consecutive groups of the sorted physical rows, read in
        contiguous chunk-aligned slices of about `block_rows` rows."""
        chunk = self._chunk_rows
        for lo, hi in block_bounds(phys_sorted, max(chunk, block_rows // chunk * chunk)):
            yield hi - lo, self._read(self._mels, phys_sorted[lo:hi], dense=True)

    # ---------------------------------------------------------------- summary
    def info(self) -> dict[str, Any]:
        """What `audio-wgan store-info --json` prints (`storage.store_summary`)."""
        mean, std = self.stats() if len(self) else (np.zeros(0), np.zeros(0))
        return summary_fields(self.path, self.manifest, self.fingerprint, self.disk_bytes(),
                              self._chunk_rows, mean.tolist(), std.tolist())


class _Closed:
    """Stands in for the arrays of a closed MelStore."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __getattr__(self, name: str) -> Any:
        raise StoreError(f"store {self.path} was closed")

    def __getitem__(self, key: Any) -> Any:
        raise StoreError(f"store {self.path} was closed")


