"""Crash-test hooks (tests prove crash safety with them): with AUDIO_WGAN_KILL_AT=
"<point>:<n>", the process that passes the named point for the n-th time SIGKILLs itself
there; with AUDIO_WGAN_KILL_ON_FILE=<path>, the process about to decode that source file
(its path relative to DATA_DIR) does, as a crashing decoder would."""

from __future__ import annotations

import os
import signal

KILL_ENV = "AUDIO_WGAN_KILL_AT"
KILL_ON_FILE_ENV = "AUDIO_WGAN_KILL_ON_FILE"
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
        os.kill(os.getpid(), signal.SIGKILL)


def fault_file(path: str) -> None:
    if path and os.environ.get(KILL_ON_FILE_ENV) == path:
        os.kill(os.getpid(), signal.SIGKILL)
