"""Child processes that never outlive the process that started them (Linux).

`prctl(PR_SET_PDEATHSIG)` asks the kernel to signal a process when its parent dies: a
command killed outright (SIGKILL, the OOM killer) then leaves no Prefect server, torchrun
agent or training rank behind, re-parented to PID 1 and writing checkpoints the next run
would pick up. Elsewhere these are no-ops.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with(parent: int, sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess: the child gets `sig` when `parent` (the caller's
    pid) dies; None where Linux's prctl is not there."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # died before the line above
            os._exit(1)

    return arm


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Arm this process (already started, e.g. a rank torchrun spawned) to get `sig` when
    its parent dies; exit at once if the parent is gone already (re-parented to init)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() == 1:
        os._exit(1)
