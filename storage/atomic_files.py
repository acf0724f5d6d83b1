"""Whole-file replacement that neither a reader nor a crash ever sees half done.

The new content goes to a temp file beside the target (same filesystem), is fsynced, and
is renamed over the target; with `durable=True` the directory is fsynced too, so the
rename itself survives a power cut. A writer killed midway leaves only a temp file named
`TMP_PREFIX + <target name> + .<random>`, which `remove_temps` clears.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

TMP_PREFIX = ".tmp-"


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename still holds
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object], durable: bool = False
                 ) -> Path:
    """Call write(fileobj) on a temp file beside `path`, fsync it, rename it over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes, durable: bool = False) -> Path:
    return atomic_write(path, lambda f: f.write(data), durable)


def atomic_wav(path: Path, wave: Any, sample_rate: int) -> Path:
    """A 16-bit PCM WAV (samples (frames,) or (frames, channels)) that appears whole or
    not at all: a full disk or a kill leaves no empty or truncated clip."""
    import soundfile as sf

    return atomic_write(path, lambda f: sf.write(f, wave, sample_rate, subtype="PCM_16",
                                                 format="WAV"))


def atomic_figure(path: Path, save: Callable[[BinaryIO], object]) -> Path:
    """A picture `save(fileobj)` writes (a PNG from matplotlib), whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, save)


def remove_temps(d: Path, name: str = "") -> None:
    """Temp files a killed writer left in `d` (only those for target `name`, if given)."""
    for p in d.glob(f"{TMP_PREFIX}{name}*"):
        with contextlib.suppress(OSError):
            p.unlink()
