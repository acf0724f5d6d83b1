"""The mel store's manifest: the one source of truth for which rows are live.

The Zarr arrays only ever grow by appending (until a compaction copies the live rows into
a new generation of arrays); a row becomes visible when the manifest that owns it is
committed (atomically: locally a temp file, fsync, `os.replace`, fsync of the directory;
on object storage one conditional PUT, see `storage.store_backend`).
Everything a reader needs besides the row data lives here: the mel configuration, class
names, source files with content hashes and the physical row range each one owns,
rejected/ignored files, and normalisation statistics tagged with the fingerprint they
were computed for (so stale statistics are never served after an interrupted run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gan.mel_config import MelConfig
from storage.file_names import escape, is_plain, unescape
from storage.store_backend import Lock, StoreBackend, backend_for
from storage.store_errors import StoreError
from storage.store_generations import LEASE_RETRIES
from storage.store_names import MANIFEST_FILE

FORMAT = "audio-wgan-mel-store"
FORMAT_VERSION = 2  # the newest this code reads and writes
# version 1: arrays at the group root; version 2 adds compaction generations (arrays of
# generation g > 0 under `gen<g>/`). A store is written as version 1 until it is first
# compacted, so older code keeps reading it and refuses (one line) only compacted ones.
# bump when the decode/segment/mel code changes what a file turns into (part of the fingerprint)
FEATURE_VERSION = 1
# names (file paths, class folders) are written escaped (storage.file_names) by manifests
# that say so; older ones hold plain names
PATH_ESCAPE = 1


@dataclass
class FileEntry:
    """One kept source file and the physical rows [start, stop) it owns."""

    id: int
    path: str  # relative to DATA_DIR, posix separators
    hash: str
    size: int
    mtime_ns: int
    label: int
    start: int
    stop: int
    sample_rate: int = 0  # of the source file
    channels: int = 0
    samples: int = 0  # decoded length at the store's sample rate

    @property
    def n_rows(self) -> int:
        return self.stop - self.start

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileEntry:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Manifest:
    mel: dict[str, Any]
    classes: list[str] = field(default_factory=list)
    rows: int = 0  # physical rows committed (live and dead); the append position
    next_id: int = 0
    files: dict[str, FileEntry] = field(default_factory=dict)  # by path
    # path, reason (+ size and mtime_ns when its content decided it: clips.scan)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    stats: dict[str, Any] | None = None
    commits: int = 0
    generation: int = 0  # which copy of the arrays holds the rows (bumped by compaction)
    # CRC-32 per chunk of the committed rows, per array (storage.store_integrity); None in
    # stores made before checksums existed
    checksums: dict[str, list[int | None]] | None = None
    # files whose rows were in damaged chunks and were dropped (`compact --drop-damaged`):
    # no longer kept, so the next precompute computes them again
    requeued: list[str] = field(default_factory=list)
    # class folders that are links to folders outside DATA_DIR: {"class", "target"}
    linked_classes: list[dict[str, str]] = field(default_factory=list)
    # the commit at which a writer's finalize left nothing pending (rows trimmed, statistics,
    # attributes, compaction); a writer opening the store clears it before writing anything,
    # so `settled == commits` means no writer has touched the store since (store_settled)
    settled: int = 0

    @property
    def format_version(self) -> int:
        return 2 if self.generation else 1

    @property
    def mel_config(self) -> MelConfig:
        return MelConfig.from_dict(self.mel)

    def live_entries(self) -> list[FileEntry]:
        """Kept files in path order: the canonical (history independent) live-row order."""
        return [self.files[p] for p in sorted(self.files)]

    def live_rows(self) -> int:
        return sum(e.n_rows for e in self.files.values())

    def known_files(self) -> dict[str, tuple[int, int, str]]:
        """path -> (size, mtime_ns, hash) of every kept file, for change detection."""
        return {p: (e.size, e.mtime_ns, e.hash) for p, e in self.files.items()}

    def known_rejections(self) -> dict[str, dict[str, Any]]:
        """path -> report of every rejected file remembered with its size and mtime."""
        return {r["path"]: r for r in self.rejected
                if isinstance(r.get("size"), int) and isinstance(r.get("mtime_ns"), int)}

    def fingerprint(self) -> str:
        """Changes iff the live content (files, their hashes and labels) or mel config changes.

        Rows are a deterministic function of (file content, mel config, feature version),
        so hashing the manifest is enough; no need to hash megabytes of mels.
        """
        doc = {
            "feature_version": FEATURE_VERSION,
            "mel": self.mel,
            "classes": self.classes,
            "files": [[e.path, e.hash, e.label, e.n_rows] for e in self.live_entries()],
        }
        blob = json.dumps(doc, sort_keys=True, ensure_ascii=True).encode()
        return hashlib.blake2b(blob, digest_size=16).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The committed document, with the file entries as `FileEntry` objects (orjson
        writes dataclasses natively; `to_json` is what a commit writes)."""
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "feature_version": FEATURE_VERSION,
            "path_escape": PATH_ESCAPE,
            "mel": self.mel,
            "classes": _names(self.classes),
            "rows": self.rows,
            "next_id": self.next_id,
            "fingerprint": self.fingerprint(),
            "files": [e if is_plain(e.path) else dataclasses.replace(e, path=escape(e.path))
                      for e in self.live_entries()],
            "rejected": _reports(self.rejected),
            "ignored": _reports(self.ignored),
            "empty_classes": _names(self.empty_classes),
            "stats": self.stats,
            "commits": self.commits,
            "generation": self.generation,
            "checksums": self.checksums,
            "requeued": _names(self.requeued),
            "linked_classes": [{"class": escape(c["class"]), "target": escape(c["target"])}
                               for c in self.linked_classes],
            "settled": self.settled,
        }

    def to_json(self) -> bytes:
        """UTF-8 JSON, compact. orjson, not json: a commit rewrites every entry, and with
        3000 files json took 9 ms a commit against orjson's 0.6 ms, all of it holding the
        GIL that precompute's worker threads need. numpy scalars are written as numbers,
        as json wrote the float64 ones."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        """The manifest of a committed document, checked as a whole (`check_document`):
        ValueError (one line) names the first thing wrong with a hand-edited or damaged
        one, so no reader acts on negative row counts or merged classes."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError("not an audio-wgan mel store manifest")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"store format {d.get('format_version')} is newer than this code "
                             f"understands ({FORMAT_VERSION}); upgrade audio-wgan")
        check_document(d)
        files = [FileEntry.from_dict(f) for f in d.get("files", [])]
        un = unescape if d.get("path_escape") else _same
        for f in files:
            f.path = un(f.path)
        classes = [un(c) for c in d.get("classes", [])]
        if len(set(classes)) != len(classes) or len({f.path for f in files}) != len(files):
            raise ValueError("manifest names a class or a file twice")
        return cls(
            mel=dict(d["mel"]),
            classes=classes,
            rows=int(d.get("rows", 0)),
            next_id=int(d.get("next_id", 0)),
            files={f.path: f for f in files},
            rejected=[_unescaped(r, un) for r in d.get("rejected", [])],
            ignored=[_unescaped(r, un) for r in d.get("ignored", [])],
            empty_classes=[un(c) for c in d.get("empty_classes", [])],
            stats=d.get("stats"),
            commits=int(d.get("commits", 0)),
            generation=int(d.get("generation", 0)),
            checksums=d.get("checksums"),
            requeued=[un(p) for p in d.get("requeued", [])],
            linked_classes=[{"class": un(c["class"]), "target": un(c["target"])}
                            for c in d.get("linked_classes", [])],
            settled=int(d.get("settled", 0)),
        )


_COUNTS = ("rows", "next_id", "commits", "generation", "settled")
_ENTRY_INTS = ("id", "size", "mtime_ns", "label", "start", "stop", "sample_rate",
               "channels", "samples")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_document(d: dict[str, Any]) -> None:
    """A committed manifest document as a whole: types, ranges and consistency (every
    file's rows within the committed rows, no two files owning a row, labels naming a
    class, settled never past commits). ValueError, one line, names the first violation."""
    def bad(what: str) -> None:
        raise ValueError(f"manifest is damaged: {what}")

    if not isinstance(d.get("mel"), dict):
        bad("mel is not an object")
    try:
        MelConfig.from_dict(d["mel"])
    except (TypeError, ValueError) as exc:
        bad(f"mel is not a mel configuration ({' '.join(str(exc).split())[:120]})")
    for k in _COUNTS:
        v = d.get(k, 0)
        if not _is_int(v) or v < 0:
            bad(f"{k} is {v!r}, not a count")
    if d.get("settled", 0) > d.get("commits", 0):
        bad("settled is past commits")
    for k in ("classes", "empty_classes", "requeued"):
        v = d.get(k, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            bad(f"{k} is not a list of names")
    for k in ("rejected", "ignored", "linked_classes", "files"):
        v = d.get(k, [])
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            bad(f"{k} is not a list of objects")
    if not all(isinstance(r.get("path"), str) and isinstance(r.get("reason", ""), str)
               for k in ("rejected", "ignored") for r in d.get(k, [])):
        bad("a rejected or ignored entry has no path")
    if not all(isinstance(c.get("class"), str) and isinstance(c.get("target"), str)
               for c in d.get("linked_classes", [])):
        bad("a linked class entry is not a class and a target")
    for k in ("stats", "checksums"):
        if d.get(k) is not None and not isinstance(d[k], dict):
            bad(f"{k} is not an object")
    n_classes, rows = len(d.get("classes", [])), d.get("rows", 0)
    spans, ids = [], set()
    for f in d.get("files", []):
        path = f.get("path")
        if not isinstance(path, str) or not path or not isinstance(f.get("hash"), str):
            bad("a file entry has no path or hash")
        for k in _ENTRY_INTS:
            if k in f and not _is_int(f[k]):
                bad(f"{path}: {k} is {f[k]!r}, not an integer")
        missing = [k for k in ("id", "label", "start", "stop") if k not in f]
        if missing:
            bad(f"{path}: no {missing[0]}")
        if not 0 <= f["label"] < n_classes:
            bad(f"{path}: label {f['label']} names no class (there are {n_classes})")
        if not 0 <= f["start"] <= f["stop"] <= rows:
            bad(f"{path}: rows [{f['start']}, {f['stop']}) are not within the {rows} "
                "committed rows")
        if f["id"] in ids:
            bad(f"{path}: id {f['id']} is used twice")
        ids.add(f["id"])
        spans.append((f["start"], f["stop"], path))
    spans.sort()
    for (_, stop, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < stop:
            bad(f"{a} and {b} own the same rows")


def _same(name: str) -> str:
    return name


def _unescaped(report: dict[str, str], un: Callable[[str], str]) -> dict[str, str]:
    return {**report, "path": un(report["path"]), "reason": un(report.get("reason", ""))}


def _names(names: list[str]) -> list[str]:
    return [escape(n) for n in names]


def _reports(reports: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rejected/ignored entries with escaped paths (and reasons, which may quote them)."""
    return [r if is_plain(r["path"]) and is_plain(r.get("reason", ""))
            else {**r, "path": escape(r["path"]), "reason": escape(r.get("reason", ""))}
            for r in reports]


def read_manifest(store: str | Path | StoreBackend) -> Manifest | None:
    """The committed manifest, or None when the store has never committed one."""
    data = backend_for(store).read_bytes(MANIFEST_FILE)
    if data is None:
        return None
    return Manifest.from_dict(orjson.loads(data))  # bad JSON: a ValueError, as with json


def committed_manifest(be: StoreBackend) -> Manifest:
    """The committed manifest of the store `be`; StoreError (one line) when there is no
    store, no committed manifest, or one that does not parse."""
    p = be.path
    if not be.exists():
        raise StoreError(f"no mel store at {p}; run `audio-wgan precompute DATA_DIR "
                         f"--store {p}` first")
    try:
        manifest = read_manifest(be)
    except StoreError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        text = " ".join((str(exc) or type(exc).__name__).split())
        raise StoreError(f"{p}/{MANIFEST_FILE} is unreadable: {text}") from None
    if manifest is None:
        raise StoreError(f"{p} is not a mel store (no committed {MANIFEST_FILE}); "
                         f"run `audio-wgan precompute DATA_DIR --store {p}`")
    return manifest


def leased_manifest(be: StoreBackend) -> tuple[Manifest, Lock]:
    """The committed manifest and a held reader lease on its generation (release it when
    done), so that a compaction keeps the arrays it names; StoreError as
    `committed_manifest`, or when compactions keep moving on."""
    manifest = committed_manifest(be)
    for _ in range(LEASE_RETRIES):
        # lease the generation, then check it is still the committed one: a compaction
        # may have moved on (and deleted it) between the two reads
        lease = be.reader_lease(manifest.generation).acquire()
        latest = committed_manifest(be)
        if latest.generation == manifest.generation:
            return latest, lease
        lease.release()
        manifest = latest
    raise StoreError(f"store {be.path} keeps being compacted; try again")


def commit_manifest(store: str | Path | StoreBackend, manifest: Manifest) -> None:
    """Atomically replace the committed manifest (durable once this returns); on an object
    store only if nobody committed since this backend read it."""
    manifest.commits += 1
    backend_for(store).commit(MANIFEST_FILE, manifest.to_json())
