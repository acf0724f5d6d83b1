"""Find the labelled clips under DATA_DIR and diff them against the store's manifest.

DATA_DIR/<class>/**/<file> with an audio extension is a clip of <class>. Hidden files and
folders (name starting with ".") are skipped silently; files directly in DATA_DIR and
non-audio files in class folders are reported as ignored; class folders without a single
audio file are reported as empty (no class is created for them). Symlinked files and
folders are followed (loops are cut); a class folder that is a link to a folder outside
DATA_DIR is taken in as that class and reported (`linked_classes`, in the summary and in
`store-info`), so that data from elsewhere never enters a store unannounced. A link that
leads back into DATA_DIR (or to a folder above it) is not followed and is reported as
ignored: it would store the same clips twice, under another class. A class folder whose
name is not a class name a model can carry (`clips.names.class_name_problem`: UTF-8,
printable, at most MAX_CLASS_NAME characters) is reported as ignored, with the reason.
File names are whatever the file system holds: undecodable bytes travel as surrogate
escapes (PEP 383), which `os` turns back into the same bytes, and the store writes them
escaped (storage.file_names). A folder that cannot be listed, or a file that cannot be
stat'ed, is reported (`unreadable`) and counts as present: its kept rows are never dropped
because of a failed look. The size+mtime check decides what must be re-read; content
hashes then decide what really changed.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clips.names import class_name_problem, is_audio_name, reason_text


class PrecomputeError(ValueError):
    """A precompute run cannot go on; the message is one line."""


class DataDirError(PrecomputeError):
    """DATA_DIR is missing or unusable."""


@dataclass
class SourceFile:
    path: str  # relative to DATA_DIR, "/" separated
    abs_path: str
    class_name: str
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    files: list[SourceFile] = field(default_factory=list)  # sorted by path
    ignored: list[dict[str, str]] = field(default_factory=list)
    # could not even stat (a file) or list (a folder: "path/"): present, but unread
    unreadable: list[dict[str, str]] = field(default_factory=list)
    class_dirs: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    # class folders that are links to folders outside DATA_DIR: {"class", "target"}
    linked_classes: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Plan:
    """What a precompute run has to do, from a scan and the committed manifest."""

    scan: ScanResult
    todo: list[SourceFile]  # new, or size/mtime changed: read + hash (+ decode)
    known_hash: dict[str, str]  # path -> committed hash, for todo files already kept
    unchanged: list[str]
    removed: list[str]  # kept in the manifest but gone from DATA_DIR
    # rejected before for a reason of their own bytes, size and mtime unchanged since
    kept_rejected: list[dict[str, Any]] = field(default_factory=list)


# Rejections that only a file's bytes decide: remembered with its size and mtime, so that
# an unchanged re-run reads (and imports torch for) no file it rejected before; the file
# is tried again once either changes. Limits (set in the environment), I/O errors, a
# crashed decoder and "changed while being read" are tried again on every run.
def remembered_rejection(path: str, reason: str, size: int, mtime_ns: int, decoder: str,
                         by_content: bool) -> dict[str, Any]:
    """The manifest's report of one rejected file: with its size, mtime and the decoder
    (libsndfile's version) when its own bytes decided it (`by_content`, see
    clips.outcome.ClipRejected), so that the next run with that decoder need not read it."""
    entry: dict[str, Any] = {"path": path, "reason": reason}
    if by_content and size >= 0 and mtime_ns > 0:
        entry.update(size=int(size), mtime_ns=int(mtime_ns), decoder=decoder)
    return entry


def decoder_version() -> str:
    """libsndfile's version: a file it could not decode may decode after an upgrade."""
    import soundfile

    return str(soundfile.__libsndfile_version__)


def scan_data_dir(data_dir: str | Path, exclude: str | Path | None = None) -> ScanResult:
    """Walk DATA_DIR; `exclude` (the store, when it lives inside DATA_DIR) is skipped."""
    root = Path(data_dir)
    skip = os.path.realpath(exclude) if exclude is not None else None
    if not root.exists():
        raise DataDirError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise DataDirError(f"{root} is not a directory")
    res = ScanResult()
    real_root = os.path.realpath(root)
    walked: dict[str, str] = {}  # every folder walked (resolved) -> the class it is in
    try:
        top = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise DataDirError(f"cannot list {root}: {reason_text(exc.strerror or exc)}") from None
    for entry in top:
        if entry.name.startswith("."):
            continue
        if skip is not None and os.path.realpath(entry.path) == skip:
            continue
        kind = _kind(entry.path)
        if kind == "missing":  # a dangling link, a stat that failed: present, unread
            res.unreadable.append({"path": entry.name + "/", "reason": MISSING_TARGET})
        elif kind == "dir":
            problem = class_name_problem(entry.name)
            if problem:
                res.ignored.append({"path": entry.name + "/", "reason": problem})
                continue
            target = os.path.realpath(entry.path)
            if entry.is_symlink() and (_inside(real_root, target)
                                       or _scanned(target, real_root)):
                res.ignored.append({"path": entry.name + "/", "reason": LINK_BACK})
                continue
            res.class_dirs.append(entry.name)
            if entry.is_symlink() and os.path.commonpath([real_root, target]) != real_root:
                res.linked_classes.append({"class": entry.name, "target": target})
            n_before = len(res.files) + len(res.unreadable)
            _walk_class(root, real_root, entry.name, res, walked)
            if len(res.files) + len(res.unreadable) == n_before:
                res.empty_classes.append(entry.name)
        else:
            res.ignored.append({"path": entry.name, "reason": "outside any class folder"})
    res.files.sort(key=lambda f: f.path)
    return res


LINK_BACK = "a link back into the data folder (or above it): not followed"
MISSING_TARGET = ("unreadable: a link to nothing, or a folder that cannot be looked at "
                  "(unmounted?); its stored rows are kept")


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _scanned(path: str, real_root: str) -> bool:
    """Inside DATA_DIR's scanned part: under a top-level folder whose name is not hidden."""
    if not _inside(path, real_root) or path == real_root:
        return False
    return not os.path.relpath(path, real_root).startswith(".")


def _kind(path: str) -> str:
    """"dir", "file" (anything else that exists) or "missing" (a dangling link, or a path
    whose stat fails: an I/O error on a half-mounted share), following links."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing" if os.path.lexists(path) else "file"
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


def links_back(real: str, real_root: str, real_base: str) -> bool:
    """A folder (resolved: `real`) reached inside the class folder resolving to
    `real_base` that is DATA_DIR, above it, elsewhere in its scanned part, or above its
    own class: its clips are stored under their own class (or would loop), so it is not
    followed. (Hidden folders of DATA_DIR are never scanned: a link into one is data.)"""
    return (_inside(real_root, real)
            or (_scanned(real, real_root) and not _inside(real, real_base))
            or (real != real_base and _inside(real_base, real)))


def _walk_class(root: Path, real_root: str, cls: str, res: ScanResult,
                walked: dict[str, str]) -> None:
    base = str(root / cls)
    real_base = os.path.realpath(base)

    def where_of(dirpath: str) -> str:
        sub = dirpath[len(base):].strip(os.sep).replace(os.sep, "/")
        return f"{cls}/{sub}/" if sub else f"{cls}/"

    def unlisted(exc: OSError) -> None:
        where = where_of(exc.filename) if isinstance(exc.filename, str) else f"{cls}/"
        res.unreadable.append({"path": where, "reason": "folder unreadable: "
                               f"{reason_text(exc.strerror or exc)}"})

    for dirpath, dirnames, filenames in os.walk(base, followlinks=True, onerror=unlisted):
        real = os.path.realpath(dirpath)
        prefix = where_of(dirpath)
        if links_back(real, real_root, real_base):
            res.ignored.append({"path": prefix, "reason": LINK_BACK})
            dirnames[:] = []
            continue
        if real in walked:  # a loop, or a folder another class link already reached
            if walked[real] != cls:
                res.ignored.append({"path": prefix, "reason": f"the same folder as in class "
                                    f"{walked[real]}: not stored twice"})
            dirnames[:] = []
            continue
        walked[real] = cls
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            abs_path = os.path.join(dirpath, name)
            rel = prefix + name
            if not is_audio_name(name):
                if _kind(abs_path) == "missing":  # a dangling link to a folder, unread
                    res.unreadable.append({"path": rel + "/", "reason": MISSING_TARGET})
                else:
                    res.ignored.append({"path": rel, "reason": "not an audio file extension"})
                continue
            try:  # one stat per clip: the scan of an unchanged folder is mostly these
                st = os.stat(abs_path)
            except OSError as exc:
                why = (MISSING_TARGET if os.path.lexists(abs_path)  # a dangling link
                       else f"unreadable: {reason_text(exc.strerror or exc)}")
                res.unreadable.append({"path": rel, "reason": why})
                continue
            if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
                res.unreadable.append({"path": rel, "reason": "not a regular file"})
                continue
            res.files.append(SourceFile(rel, abs_path, cls, st.st_size, st.st_mtime_ns))


def plan_changes(scan: ScanResult, known: dict[str, tuple[int, int, str]],
                 rejected: dict[str, dict[str, Any]] | None = None, decoder: str = ""
                 ) -> Plan:
    """Diff a scan against the manifest's (size, mtime_ns, hash) per kept path, and its
    remembered rejections (`remembered_rejection`, made with `decoder`) per rejected path."""
    todo, unchanged, known_hash, kept_rejected = [], [], {}, []
    # what could not be stat'ed or listed counts as present: a failed look drops nothing
    present = {u["path"] for u in scan.unreadable}
    unlisted = tuple(p for p in present if p.endswith("/"))
    rejected = rejected or {}
    for f in scan.files:
        present.add(f.path)
        r = rejected.get(f.path)
        if r is not None and (r["size"], r["mtime_ns"], r.get("decoder")) == (
                f.size, f.mtime_ns, decoder):
            kept_rejected.append(r)
            continue
        k = known.get(f.path)
        if k is not None and (k[0], k[1]) == (f.size, f.mtime_ns):
            unchanged.append(f.path)
            continue
        if k is not None:
            known_hash[f.path] = k[2]
        todo.append(f)
    removed = sorted(p for p in known if p not in present and not p.startswith(unlisted))
    return Plan(scan=scan, todo=todo, known_hash=known_hash, unchanged=unchanged,
                removed=removed, kept_rejected=kept_rejected)
