"""Write side of the mel store: append rows, then commit the manifest that owns them.

Crash safety comes from ordering, not from cleanup: rows are appended after the last
committed row (resize + write; Zarr's local store replaces each chunk file atomically, so
a chunk that also holds committed rows is never half-written), and only then does the
manifest that owns them get committed atomically. A writer killed at any moment leaves
rows past the committed count that no reader serves and that the next run overwrites
and trims. One writer at a time: the writer holds the store's lock (a `StoreLock` on a
directory, a lease object on object storage: `storage.store_backend`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from storage.fault_points import fault_point
from storage.store_backend import Lock, StoreBackend, backend_for
from storage.store_errors import StoreError
from storage.store_generations import generation_prefix
from storage.store_integrity import (
    Checksums,
    as_stored,
    damaged_files,
    extend_checksums,
    require_rows,
    verify_arrays,
)
from storage.store_layout import (
    ARRAY_NAMES,
    block_bounds,
    create_arrays,
    mel_sums,
    read_physical,
    stats_from_sums,
)
from storage.store_manifest import (
    FORMAT,
    MANIFEST_FILE,
    FileEntry,
    Manifest,
    commit_manifest,
    read_manifest,
)
from storage.store_mel_config import resolve_mel_config

# Automatic compaction (at the end of a precompute) once dead rows are at least this share
# of the stored rows and fill at least one mel chunk: each compaction then copies at most
# three live rows per dead row it drops, and never runs for less than a chunk of space.
COMPACT_DEAD_FRACTION = 0.25
COPY_BYTES = 32 << 20  # rows copied per block while compacting


@dataclass
class NewFile:
    """Rows computed for one source file, ready to append."""

    path: str
    class_name: str
    hash: str
    size: int
    mtime_ns: int
    mels: np.ndarray  # float16 (K, n_mels, frames)
    offsets: np.ndarray  # int64 (K,)
    sums: np.ndarray | None = None  # float64 (K, 2, n_mels); computed here when None
    sample_rate: int = 0
    channels: int = 0
    samples: int = 0


class MelStoreWriter:
    """The single writer of a store; create with `MelStoreWriter.create_or_open`."""

    def __init__(self, path: Path | str, lock: Lock, manifest: Manifest, group: zarr.Group,
                 created: bool, backend: StoreBackend | None = None) -> None:
        self.backend = backend or backend_for(path)
        self.path = self.backend.path  # a Path, or the URL of an object store
        self.manifest = manifest
        self.mel_config = manifest.mel_config
        self.created = created  # made by this writer: may be removed again if left empty
        self._lock = lock
        self._group = group
        self._use_generation(manifest.generation)
        self._dirty = False
        self._last_commit = (0.0, 0.0)  # (end time, duration)
        self.fingerprint_at_open = manifest.fingerprint()

    def _use_generation(self, generation: int) -> None:
        self._arrays = _open_arrays(self._group, generation_prefix(generation))
        self._mels, self._labels, self._source, self._offset, self._sums = self._arrays
        self._chunk_rows = int(self._mels.chunks[0])

    # ------------------------------------------------------------- open / close
    @classmethod
    def create_or_open(cls, path: str | Path | StoreBackend, mel: dict[str, Any] | None = None,
                       check: bool = True) -> MelStoreWriter:
        """Lock the store at `path` and open it for appending, creating it if needed.

        The mel configuration is checked as a whole before anything is made, and a store
        this call began to create is removed again when it fails, so a refused
        configuration leaves no directory (not even one holding only the lock file).
        With `check`, a store with a lost chunk is refused (`compact --drop-damaged`
        repairs it, opening with check=False).
        """
        be = backend_for(path)
        p = be.path
        be.check_place()  # on object storage: a missing bucket or bad credentials, one line
        try:
            committed = read_manifest(be)
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError, OSError):
            committed = None  # refused below (under the lock, or by making it), in one line
        resolve_mel_config(committed.mel if committed else None, mel, p)
        made = be.would_create()  # what to remove again if this call fails
        try:
            lock = be.writer_lock().acquire()
        except OSError as exc:  # e.g. a parent that is a regular file
            be.remove_created(made)
            raise StoreError(f"cannot create the store {p}: {exc.strerror or exc}") from None
        try:
            return cls._open_locked(be, lock, mel, check)
        except BaseException:
            lock.release()
            be.remove_created(made)
            raise

    @classmethod
    def _open_locked(cls, be: StoreBackend, lock: Lock, mel: dict[str, Any] | None,
                     check: bool = True) -> MelStoreWriter:
        p = be.path
        try:
            manifest = read_manifest(be)
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{p}/{MANIFEST_FILE} is unreadable ({exc}); use a new --store"
                             ) from None
        be.remove_partials()
        if manifest is not None:
            cfg = resolve_mel_config(manifest.mel, mel, p)
            if manifest.settled:  # durably unsettled before this writer changes anything
                manifest.settled = 0
                commit_manifest(be, manifest)
            # a compaction killed before its commit, or old arrays no reader holds now
            removed = be.remove_unused_generations(manifest.generation)
            try:
                group = zarr.open_group(be.zarr_store(), mode="r+", use_consolidated=False)
                writer = cls(p, lock, manifest, group, created=False, backend=be)
            except (KeyError, FileNotFoundError) as exc:
                raise StoreError(f"store {p} is damaged ({exc}); use a new --store") from None
            assert writer.mel_config == cfg
            if check:  # appending to a store with a lost chunk would only bury the damage
                for arr in writer._arrays:
                    require_rows(arr, manifest.rows)
            if removed:  # other Zarr tools read the consolidated metadata: drop the arrays
                writer._write_attrs(manifest.fingerprint())
            return writer
        others = [n for n in be.names() if not be.is_own_file(n)]
        if others and not _is_unfinished_store(be):
            raise StoreError(f"{p} exists and is not a mel store; use a new --store")
        cfg = resolve_mel_config(None, mel, p)
        group = _create_group(be)
        create_arrays(group, "", cfg)
        manifest = Manifest(mel=cfg.to_dict(), checksums={n: [] for n in ARRAY_NAMES})
        commit_manifest(be, manifest)
        return cls(p, lock, manifest, group, created=True, backend=be)

    def close(self) -> None:
        self._lock.release()

    def destroy(self) -> None:
        """Remove a store this writer created (used when no usable clip was found)."""
        if not self.created:
            raise StoreError("refusing to remove a store this run did not create")
        self.backend.destroy()
        self.close()

    def __enter__(self) -> MelStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- content
    def append(self, items: list[NewFile]) -> int:
        """Write the rows of `items` after the committed rows; they stay invisible until
        `commit()`. A file already in the manifest is replaced (its old rows die)."""
        items = [it for it in items if len(it.mels)]
        n = sum(len(it.mels) for it in items)
        if n == 0:
            return 0
        cfg = self.mel_config
        start = self.manifest.rows
        end = start + n
        classes = list(self.manifest.classes)
        next_id = self.manifest.next_id
        labels, ids = [], []
        for it in items:
            if it.class_name not in classes:
                classes.append(it.class_name)
            labels.append(classes.index(it.class_name))
            ids.append(next_id)
            next_id += 1
        counts = [len(it.mels) for it in items]
        mels = np.concatenate([np.asarray(it.mels, dtype=np.float16) for it in items])
        if mels.shape[1:] != (cfg.n_mels, cfg.frames):
            raise ValueError(f"rows of shape {mels.shape[1:]} do not fit this store "
                             f"({cfg.n_mels}, {cfg.frames})")
        self._ensure_capacity(end)
        self._write_rows(start, (
            mels,
            np.repeat(np.asarray(labels, dtype=np.int32), counts),
            np.repeat(np.asarray(ids, dtype=np.int32), counts),
            np.concatenate([np.asarray(it.offsets, dtype=np.int64) for it in items]),
            np.concatenate([it.sums if it.sums is not None else mel_sums(it.mels)
                            for it in items])))
        fault_point("rows_written")
        pos = start
        for it, label, fid, k in zip(items, labels, ids, counts, strict=True):
            self.manifest.files[it.path] = FileEntry(
                id=fid, path=it.path, hash=it.hash, size=it.size, mtime_ns=it.mtime_ns,
                label=label, start=pos, stop=pos + k, sample_rate=it.sample_rate,
                channels=it.channels, samples=it.samples)
            pos += k
        self.manifest.classes = classes
        self.manifest.next_id = next_id
        self.manifest.rows = end
        if self.manifest.requeued:  # computed again after `compact --drop-damaged`
            done = {it.path for it in items}
            self.manifest.requeued = [q for q in self.manifest.requeued if q not in done]
        self._dirty = True
        return n

    def _write_rows(self, start: int, columns: tuple[np.ndarray, ...]) -> None:
        """Write one batch's columns (in ARRAY_NAMES order) at row `start` and extend the
        per-chunk checksums with them (a store made before checksums gains them for every
        chunk it starts from now on)."""
        if self.manifest.checksums is None:
            self.manifest.checksums = {}
        crcs = self.manifest.checksums
        for name, arr, data in zip(ARRAY_NAMES, self._arrays, columns, strict=True):
            data = as_stored(arr, data)
            try:
                arr[start:start + len(data)] = data
            except OSError:
                raise
            except Exception as exc:  # noqa: BLE001 - the chunk it adds to does not decode
                raise StoreError(f"store {self.path} is damaged: adding rows at {start} to "
                                 f"{arr.path} failed ({' '.join(str(exc).split())}); "
                                 f"`audio-wgan store-info --verify {self.path}` lists the "
                                 "damage") from None
            extend_checksums(crcs.setdefault(name, []), int(arr.chunks[0]), start, data)

    def touch(self, path: str, size: int, mtime_ns: int) -> None:
        """Same content, new stat (e.g. copied or touched): keep rows, remember the stat."""
        e = self.manifest.files[path]
        if (e.size, e.mtime_ns) != (size, mtime_ns):
            e.size, e.mtime_ns = size, mtime_ns
            self._dirty = True

    def remove(self, paths: list[str]) -> int:
        """Stop serving the rows of these files (deleted, or now rejected)."""
        n = 0
        for p in paths:
            if self.manifest.files.pop(p, None) is not None:
                n += 1
        self._dirty = self._dirty or n > 0
        return n

    def set_reports(self, rejected: list[dict[str, str]], ignored: list[dict[str, str]],
                    empty_classes: list[str],
                    linked_classes: list[dict[str, str]] | None = None) -> None:
        new = (list(rejected), list(ignored), list(empty_classes), list(linked_classes or []))
        m = self.manifest
        if new != (m.rejected, m.ignored, m.empty_classes, m.linked_classes):
            m.rejected, m.ignored, m.empty_classes, m.linked_classes = new
            self._dirty = True

    def commit(self, force: bool = True) -> bool:
        """Make everything appended so far visible (atomic); False if nothing was committed.

        With `force=False` the commit is skipped while the time since the last one is under
        ten times what that one cost, so rewriting a large manifest never takes more than
        about a tenth of a run (small manifests are committed after every batch).
        """
        fault_point("commit_requested")  # once per batch in a precompute (tests kill here)
        if not self._dirty:
            return False
        now = time.perf_counter()
        if not force and now - self._last_commit[0] < 10 * self._last_commit[1]:
            return False
        fault_point("before_commit")
        commit_manifest(self.backend, self.manifest)
        end = time.perf_counter()
        self._last_commit = (end, end - now)
        self._dirty = False
        return True

    def live_rows(self) -> int:
        return self.manifest.live_rows()

    def _live_phys(self) -> np.ndarray:
        """Sorted physical rows of the kept files."""
        entries = sorted(self.manifest.files.values(), key=lambda e: e.start)
        if not entries:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(e.start, e.stop, dtype=np.int64) for e in entries])

    # ------------------------------------------------------------- end of run
    def finalize(self, compact: bool | None = None) -> dict[str, Any]:
        """Trim uncommitted rows, refresh statistics and attributes, consolidate metadata;
        then compact (drop dead rows) when `compact`, or, when None, once worthwhile."""
        self.commit()
        rows = self.manifest.rows
        resized = self._mels.shape[0] != rows
        if resized:
            for arr in self._arrays:
                arr.resize((rows, *arr.shape[1:]))
        fp = self.manifest.fingerprint()
        stats = self.manifest.stats
        if self.manifest.live_rows() and (not stats or stats.get("fingerprint") != fp):
            mean, std, count = stats_from_sums(self._sums, self._live_phys(),
                                               self.mel_config.n_mels, self.mel_config.frames)
            self.manifest.stats = {"fingerprint": fp, "count": int(count),
                                   "mean": [float(x) for x in mean],
                                   "std": [float(x) for x in std]}
            self._dirty = True
        fault_point("finalize")
        changed = self.commit()
        dropped, error = 0, ""
        if self.dead_rows() and (compact or (compact is None and self.should_compact())):
            try:
                dropped = self.compact()["dropped_rows"]  # writes the attributes too
            except StoreError as exc:  # e.g. a full disk: the rows are committed, keep them
                error = str(exc)
        if not dropped:
            attrs = self._group.attrs.asdict()
            if changed or resized or attrs.get("fingerprint") != fp or "mel" not in attrs:
                self._write_attrs(fp)  # and re-consolidate: other Zarr readers see the shapes
        if not error:  # last: a crash before this commit leaves the store unsettled
            self.manifest.settled = self.manifest.commits + 1  # the commit that records it
            commit_manifest(self.backend, self.manifest)
        return {"fingerprint": fp, "rows": self.manifest.live_rows(),
                "stored_rows": self.manifest.rows, "compacted_rows": dropped,
                "compaction_error": error}

    # ------------------------------------------------------------- compaction
    def dead_rows(self) -> int:
        """Committed rows no file owns any more (replaced or removed files)."""
        return self.manifest.rows - self.manifest.live_rows()

    def should_compact(self) -> bool:
        dead = self.dead_rows()
        return dead >= max(COMPACT_DEAD_FRACTION * self.manifest.rows, self._chunk_rows)

    def drop_damaged(self) -> dict[str, Any]:
        """Stop keeping the files with rows in damaged chunks (missing, not decoding, or not
        matching their checksum): their rows die, and since they are no longer in the
        manifest the next precompute computes them again (listed as `requeued` until
        then). Returns the damaged chunks and those files; `compact()` drops the rows."""
        m = self.manifest
        rep = verify_arrays(dict(zip(ARRAY_NAMES, self._arrays, strict=True)), m.rows,
                            m.checksums)
        lost = sorted(damaged_files(m, rep.damaged))
        for path in lost:
            del m.files[path]
        if lost:
            m.requeued = sorted(set(m.requeued) | set(lost))
            self._dirty = True
        return {"damaged_chunks": [d.describe() for d in rep.damaged], "requeued": lost}

    def compact(self) -> dict[str, int]:
        """Drop dead rows: copy the live rows into a new generation of arrays, commit the
        manifest that points at it, then delete the old generation unless a reader still
        holds it (a later writer deletes it then). What readers are served (rows, their
        order, labels, fingerprint, statistics) does not change.

        Crash safe by the same ordering as appends: a compaction killed before its commit
        leaves a partial new generation that the next writer deletes; after it, an old
        one that the next writer deletes. Chunks holding no live row are never read, so
        after `drop_damaged` the damaged ones are left behind with the old generation.
        """
        self.commit()
        m = self.manifest
        before = m.rows
        gen = m.generation + 1
        prefix = generation_prefix(gen)
        self.backend.remove_generation(gen)  # what a compaction killed earlier left
        entries = sorted(m.files.values(), key=lambda e: e.start)  # sequential reads
        live = m.live_rows()
        new = dataclasses.replace(m, rows=live, generation=gen)
        try:
            create_arrays(self._group, prefix, self.mel_config, rows=live)
            dst = _open_arrays(self._group, prefix)
            new.files, new.checksums = _copy_rows(self._arrays, dst, entries,
                                                  self._chunk_rows)
        except OSError as exc:  # a full disk, most likely: nothing was committed
            self.backend.remove_generation(gen)
            raise StoreError(f"compaction of {self.path} failed ({exc.strerror or exc}); the "
                             "store is unchanged") from None
        except StoreError:  # a damaged chunk holding live rows: see drop_damaged
            self.backend.remove_generation(gen)
            raise
        fault_point("compact_copied")
        # a commit that fails leaves the new generation to the next writer's clean-up
        commit_manifest(self.backend, new)
        self.manifest = new
        self._use_generation(gen)
        self._dirty = False
        fault_point("compact_committed")
        kept_old = gen - 1 not in self.backend.remove_unused_generations(gen)
        self._write_attrs(new.fingerprint())
        return {"dropped_rows": before - live, "rows": live, "generation": gen,
                "old_generation_kept": int(kept_old)}

    def _write_attrs(self, fp: str) -> None:
        m = self.manifest
        stats = m.stats or {}
        self._group.attrs.update({
            "format": FORMAT,
            "format_version": m.format_version,
            "manifest": MANIFEST_FILE,
            "generation": m.generation,
            "arrays": generation_prefix(m.generation) or "/",
            "mel": m.mel,
            "classes": m.classes,
            "fingerprint": fp,
            "live_rows": m.live_rows(),
            "stored_rows": m.rows,
            "pad_policy": m.mel.get("pad_policy"),
            "long_clip_policy": m.mel.get("long_clip_policy"),
            "norm_mean": stats.get("mean"),
            "norm_std": stats.get("std"),
        })
        self.backend.consolidate()  # other Zarr readers see the shapes

    def _ensure_capacity(self, rows: int) -> None:
        have = self._mels.shape[0]
        if have >= rows:
            return
        grow = max(rows, int(have * 1.25))
        target = math.ceil(grow / self._chunk_rows) * self._chunk_rows
        for arr in self._arrays:
            arr.resize((target, *arr.shape[1:]))


def _create_group(be: StoreBackend) -> zarr.Group:
    group = zarr.open_group(be.zarr_store(), mode="a", zarr_format=3, use_consolidated=False)
    group.attrs.update({"format": FORMAT, "format_version": 1, "manifest": MANIFEST_FILE})
    return group


def _open_arrays(group: zarr.Group, prefix: str) -> tuple[zarr.Array, ...]:
    """mels, labels, source, offset, mel_sums of one generation, opened for writing."""
    # Zarr compares every chunk it writes with the fill value, to skip storing empty ones;
    # ours are never empty, and the check took a quarter of the time of writing mels
    with zarr.config.set({"array.write_empty_chunks": True}):
        return tuple(group[prefix + n] for n in ARRAY_NAMES)


def _copy_rows(src: tuple[zarr.Array, ...], dst: tuple[zarr.Array, ...],
               entries: list[FileEntry], chunk_rows: int
               ) -> tuple[dict[str, FileEntry], Checksums]:
    """Copy the rows of `entries` (in physical order) from the `src` arrays to the start
    of the `dst` ones, packed; return the entries with their new row ranges and the
    checksums of the new chunks.

    Reads chunk-aligned blocks of about COPY_BYTES once each (live rows are often scattered
    a few at a time among dead ones: reading each run alone decompressed its chunks again
    and again) and writes whole chunks (a partial one only at the end), so memory stays
    bounded by a few blocks.
    """
    row_bytes = sum(a.dtype.itemsize * math.prod(a.shape[1:]) for a in src)
    block = max(1, COPY_BYTES // (row_bytes * chunk_rows)) * chunk_rows
    phys = (np.concatenate([np.arange(e.start, e.stop, dtype=np.int64) for e in entries])
            if entries else np.zeros(0, dtype=np.int64))
    pending: list[list[np.ndarray]] = [[] for _ in src]
    crcs: Checksums = {name: [] for name in ARRAY_NAMES}
    held = written = 0

    def flush(n: int) -> None:
        nonlocal held, written
        for i, arr in enumerate(dst):
            data = np.concatenate(pending[i]) if len(pending[i]) > 1 else pending[i][0]
            out = as_stored(arr, data[:n])
            arr[written:written + n] = out
            extend_checksums(crcs[ARRAY_NAMES[i]], int(arr.chunks[0]), written, out)
            pending[i] = [data[n:]] if n < len(data) else []
        held -= n
        written += n
        fault_point("compact_block")

    for lo, hi in block_bounds(phys, block):
        for i, arr in enumerate(src):
            pending[i].append(read_physical(arr, phys[lo:hi]))
        held += hi - lo
        if held >= block:
            flush(held // chunk_rows * chunk_rows)
    if held:
        flush(held)
    out, pos = {}, 0
    for e in entries:
        out[e.path] = dataclasses.replace(e, start=pos, stop=pos + e.n_rows)
        pos += e.n_rows
    assert pos == written
    return out, crcs


def _is_unfinished_store(be: StoreBackend) -> bool:
    """A store whose creation was interrupted before its first manifest commit."""
    try:
        attrs = zarr.open_group(be.zarr_store(read_only=True), mode="r",
                                use_consolidated=False).attrs.asdict()
    except Exception:  # noqa: BLE001 - anything unreadable is "not ours"
        return False
    return attrs.get("format") == FORMAT
