"""Whether code runs inside a Prefect flow or task run (artifacts need one).

Tasks here are also called with `.fn()` from the CLI and tests, outside any run; they
publish artifacts only when this says they can.
"""

from __future__ import annotations

from prefect.context import FlowRunContext, TaskRunContext


def in_prefect_run() -> bool:
    return TaskRunContext.get() is not None or FlowRunContext.get() is not None
