"""What every command shares once its options are parsed: the one-line refusal (UserError),
the Prefect server a flow command talks to, and the last line of stderr.

Kept apart from `audio_wgan.cli` (which imports the command modules) so that the command
modules import this and nothing imports in a circle.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


class Interrupted(Exception):
    """Ctrl-C inside a command (typer would turn a KeyboardInterrupt into a silent exit 130;
    this carries it past typer to the one line `main` prints)."""


# the commands that run flows, and the flow module each imports (while a server for the
# command starts: audio_wgan.prefect_server); a PREFECT_API_URL that does not answer is
# one line before any work
PREFECT_COMMANDS = {"precompute": "flows.precompute", "train": "flows.train",
                    "run": "flows.retrain", "render": "flows.render",
                    "evaluate": "flows.evaluate"}


def dispatch(name: str, run: Callable[[SimpleNamespace], int | None],
             params: dict[str, Any],
             prepare: Callable[[SimpleNamespace, bool], object] | None = None) -> int:
    """Run a command's body on its parsed options (a namespace, as argparse gave them).
    A flow command imports its flow, and runs `prepare(args, waits)`, while the Prefect
    server it talks to starts (`waits`: one is starting, see audio_wgan.prefect_server)."""
    args = SimpleNamespace(command=name, **params)

    def ready(waits: bool) -> None:
        import importlib

        importlib.import_module(PREFECT_COMMANDS[name])
        if prepare is not None:
            prepare(args, waits)

    try:
        if name in PREFECT_COMMANDS:
            from audio_wgan.prefect_server import flow_server

            with flow_server(ready):
                check_prefect_api()
                return int(run(args) or 0)
        return int(run(args) or 0)
    except KeyboardInterrupt:
        raise Interrupted() from None


def quiet_run_failures() -> None:
    """Drop Prefect's console tracebacks for failed flow/task runs: the CLI prints the reason
    as one line. The records still reach the Prefect API (the UI keeps them)."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        failed_run = record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
        return not (failed_run and record.levelno >= logging.ERROR)

    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.addFilter(keep)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def check_prefect_api() -> None:
    """A PREFECT_API_URL that does not answer is one line before the flow starts (Prefect
    raises it from deep in its engine, as a traceback). Unset, Prefect starts its own."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise UserError(f"the Prefect API at {url} does not answer "
                        f"({type(problem).__name__}); start that server or unset "
                        f"PREFECT_API_URL")


def fail(line: str) -> None:
    """Print the reason as the last line of stderr.

    Prefect's background services (events, API logs) drain when the interpreter exits and
    then log warnings of their own ("EventsWorker - Still processing items"); they are
    drained here first, the way Prefect's test harness does, so nothing follows our line;
    a drain that outlasts its timeout (a busy machine) has its progress warnings silenced.
    """
    import logging

    for service in ("EventsWorker", "APILogWorker"):  # Prefect's service loggers' names
        logging.getLogger(service).setLevel(logging.ERROR)
    drain_prefect_services()
    sys.stdout.flush()
    print(" ".join(line.split()), file=sys.stderr, flush=True)


def drain_prefect_services(timeout: float = 10.0) -> None:
    """Send what Prefect still queues (only when this run imported Prefect at all)."""
    if "prefect.events.worker" not in sys.modules:
        return
    import contextlib

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        with contextlib.suppress(Exception):  # nothing to drain, or the API is gone
            service.drain_all(timeout=timeout)
