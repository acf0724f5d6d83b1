"""Output folders checked before any work: a run must not fail on its first write.

`--checkpoint-dir`, `--out`, `--store` and the like name folders that a command creates
later (after an epoch of training, a render, a scan). A path whose way runs through a
regular file, a broken link or a name the OS refuses can be told at once, without
creating anything.
"""

from __future__ import annotations

import os
from pathlib import Path


class OutputPathError(ValueError):
    """An output folder that cannot be created or written; the message is one line."""


def check_output_dir(path: str | os.PathLike[str], option: str = "output folder") -> Path:
    """`path` as a Path when it is a writable folder or one that can be created.

    Creates nothing. Raises OutputPathError naming `option` and the part in the way.
    """
    text = os.fspath(path)
    if not text.strip():
        raise OutputPathError(f"{option} must not be empty")
    if "\0" in text:
        raise OutputPathError(f"{option} {text!r} holds a NUL byte")
    p = Path(text)
    long = [part for part in p.parts if len(os.fsencode(part)) > 255]
    if long:
        raise OutputPathError(f"{option} {text[:200]}: a name on the way is longer than 255 "
                              f"bytes")
    probe = p
    try:
        while not probe.exists():
            if os.path.lexists(probe):
                raise OutputPathError(f"{option} {p}: {probe} is a broken link")
            if probe.parent == probe:
                break
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            what = "is a regular file" if probe.is_file() else "is not a folder"
            where = f"{probe} {what}" if probe == p else f"{probe} {what}, not a folder"
            raise OutputPathError(f"{option} {p}: {where}")
        if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
            raise OutputPathError(f"{option} {p}: {probe} is not writable")
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES on the way
        raise OutputPathError(f"{option} {p}: {exc.strerror or exc}") from None
    return p
