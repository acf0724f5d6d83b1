"""Crash-test hooks (tests prove crash safety with them): with AUDIO_WGAN_KILL_AT=
"<point>:<n>", the process that passes the named point for the n-th time SIGKILLs itself
there; with AUDIO_WGAN_KILL_ON_FILE=<path>, the process about to decode that source file
(its path relative to DATA_DIR) does, as a crashing decoder would. With
AUDIO_WGAN_KILL_ONCE=<marker file> as well, only the first process to create the marker
dies (once per run, whichever worker gets there: a worker lost once, not a bad file).
With AUDIO_WGAN_FAIL_AT="<point>:<n>" the process raises `InjectedFault` there instead: a
transient failure that a retried task survives (its count runs on within the process).
With AUDIO_WGAN_HOLD_AT="<point>:<n>" and AUDIO_WGAN_HOLD_FILE=<marker file>, the process
creates the marker there and waits to be killed from outside (a test that kills a whole
machine's processes at one chosen moment, not at a moment chosen by the clock); it kills
itself if nobody has within HOLD_LIMIT_S, so it never goes on past the point."""

from __future__ import annotations

import os
import signal
import time

KILL_ENV = "AUDIO_WGAN_KILL_AT"
KILL_ON_FILE_ENV = "AUDIO_WGAN_KILL_ON_FILE"
KILL_ONCE_ENV = "AUDIO_WGAN_KILL_ONCE"
FAIL_ENV = "AUDIO_WGAN_FAIL_AT"
HOLD_ENV, HOLD_FILE_ENV = "AUDIO_WGAN_HOLD_AT", "AUDIO_WGAN_HOLD_FILE"
HOLD_LIMIT_S = 600.0
_counts: dict[tuple[str, str], int] = {}


class InjectedFault(RuntimeError):
    """The failure AUDIO_WGAN_FAIL_AT asked for (tests of retries)."""


def fault_point(name: str) -> None:
    if _due(KILL_ENV, name):
        _kill()
    if _due(FAIL_ENV, name):
        raise InjectedFault(f"injected failure at {name}")
    if _due(HOLD_ENV, name):
        _hold()


def _due(env: str, name: str) -> bool:
    """Whether this is the n-th pass of point `name` that `env` names."""
    spec = os.environ.get(env)
    if not spec:
        return False
    point, _, nth = spec.partition(":")
    if point != name:
        return False
    key = (env, name)
    _counts[key] = _counts.get(key, 0) + 1
    return _counts[key] == int(nth or 1)


def _hold() -> None:
    """Say "here" through the marker file, then wait for the SIGKILL from outside."""
    marker = os.environ.get(HOLD_FILE_ENV)
    if marker:
        with open(marker + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
    deadline = time.monotonic() + HOLD_LIMIT_S
    while time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


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
