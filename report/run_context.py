"""Whether code runs inside a Prefect flow or task run (artifacts need one).

Tasks are also called with `.fn()` from the CLI and tests, outside any run; they publish
artifacts only when this says they can. Without Prefect imported there is no run, so this
imports no Prefect then (the CLI's progress display asks before it knows whether a flow runs).
"""

from __future__ import annotations

import sys


def in_prefect_run() -> bool:
    if "prefect.context" not in sys.modules:  # no Prefect imported: no run either
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None
