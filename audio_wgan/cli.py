"""`audio-wgan` command line: thin; every command runs a flow or reads the registry.

Each subcommand lives in its own `audio_wgan/cmd_*.py` module exposing
`register(subparsers)`; the module sets `func` on its parser, which receives the parsed
args and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

COMMAND_MODULES = [
    "demo_data",
    "precompute",
    "store_info",
    "compact",
    "train",
    "render",
    "generate",
    "evaluate",
    "models",
    "run",
    "server",
]


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse without the usage block before its refusals: the reason is the one line
    (`--help` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or only the parser of the command `only` names (when it is
    one: the others' modules need not be imported to run it)."""
    parser = OneLineParser(
        prog="audio-wgan",
        description="Class-conditional WGAN-GP audio generator (Zarr mel store, Prefect, MLflow).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [n for n in COMMAND_MODULES if n.replace("_", "-") == only] or COMMAND_MODULES
    for name in names:
        try:
            mod = importlib.import_module(f"audio_wgan.cmd_{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"audio_wgan.cmd_{name}":
                continue  # command not built yet
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code is returned (argparse's refusals included), so that
    the command can be called in-process exactly as the console script runs it."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a refused argument (2, reason already printed)
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        fail("audio-wgan: error: a command is required (see the list above)")
        return 2
    try:
        if args.command in PREFECT_COMMANDS:
            from audio_wgan.prefect_server import use_recorded_server

            with use_recorded_server():  # `audio-wgan server start`'s, while it answers
                check_prefect_api()
                return int(args.func(args) or 0)
        return int(args.func(args) or 0)
    except UserError as exc:
        fail(f"audio-wgan {args.command}: error: {exc}")
        return 2
    except KeyboardInterrupt:
        fail(f"audio-wgan {args.command}: interrupted")
        return 130


PREFECT_COMMANDS = frozenset({"precompute", "train", "run"})  # the commands that run flows


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
    drained here first, the way Prefect's test harness does, so nothing follows our line.
    """
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


if __name__ == "__main__":
    # `python -m audio_wgan.cli`: run the canonical module's main, so that the UserError
    # the commands import (audio_wgan.cli.UserError) is the one main() catches
    from audio_wgan.cli import main as canonical_main

    sys.exit(canonical_main())
