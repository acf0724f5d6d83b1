"""Crash-test hooks (tests prove crash safety with them): with AUDIO_WGAN_KILL_AT=
"<point>:<n>", the process that passes the named point for the n-th time SIGKILLs itself
there; with AUDIO_WGAN_KILL_ON_FILE=<path>, the process about to decode that source file
(its path relative to DATA_DIR) does, as a crashing decoder would. With
AUDIO_WGAN_KILL_ONCE=<marker file> as well, only the first process to create the marker
dies (once per run, whichever worker gets there: a worker lost once, not a bad file)."""

from __future__ import annotations

import os
import signal

KILL_ENV = "AUDIO_WGAN_KILL_AT"
KILL_ON_FILE_ENV = "AUDIO_WGAN_KILL_ON_FILE"
KILL_ONCE_ENV = "AUDIO_WGAN_KILL_ONCE"
_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(nth or 1):
        _kill()


def fault_file(path: str) -> None:
    if path and os.environ.get(KILL_ON_FILE_ENV) == path:
        _kill()


def _kill() -> None:
    marker = os.environ.get(KILL_ONCE_ENV)
    if marker:
        try:  # create-if-absent: exactly one process wins
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
