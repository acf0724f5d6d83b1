"""`audio-wgan` command line (typer): thin; every command runs a flow or reads the registry.

Each command lives in its own `audio_wgan/cmd_*.py` module exposing `register(app)`, which
adds one typer command whose options are declared once, with their ranges
(`audio_wgan.params`); its body receives the parsed options and returns an exit code.

One error path: whatever refuses a command line (click's parser: a bad number, an unknown
option, a missing one; a UserError from a command) ends in one line
`audio-wgan CMD: error: REASON` as the last line of stderr and exit 2. Help is click's plain
formatter (no rich import, no markup in our help texts); rich is imported only to draw a
progress bar.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import importlib
import os
import sys
from typing import TYPE_CHECKING

from audio_wgan.command import Interrupted, UserError, fail

if TYPE_CHECKING:
    import typer

__all__ = ["COMMAND_MODULES", "UserError", "build_app", "build_command", "console", "main"]

PROG = "audio-wgan"
COMPLETE_VAR = "_AUDIO_WGAN_COMPLETE"  # set by the shell completion script (click's name)
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
    "promote",
    "run",
    "server",
    "serve",
]


def build_app(only: str | None = None) -> typer.Typer:
    """Every command, or only the one that `only` names (when it is one: the other
    commands' modules need not be imported to run it)."""
    import typer

    app = typer.Typer(
        name=PROG,
        help="Class-conditional WGAN-GP audio generator (Zarr mel store, Prefect, MLflow).",
        add_completion=True,
        pretty_exceptions_enable=False,  # a bug shows Python's own traceback
        rich_markup_mode=None,  # click's plain help: fast, and `[scale]` is not markup
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )

    @app.callback()
    def root() -> None:
        """Class-conditional WGAN-GP audio generator (Zarr mel store, Prefect, MLflow)."""

    names = [n for n in COMMAND_MODULES if n.replace("_", "-") == only] or COMMAND_MODULES
    for name in names:
        importlib.import_module(f"audio_wgan.cmd_{name}").register(app)
    return app


def build_command(only: str | None = None):  # noqa: ANN201 - typer's click group
    """The click group typer builds (what tests inspect for options and defaults)."""
    import typer.main

    return typer.main.get_command(build_app(only))


# a full disk, a quota, a read-only file system: the machine's state, not a bug
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code is returned (click's refusals included), so that the
    command can be called in-process exactly as the console script runs it."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
    # Prefect's temporary server (no server configured) migrates a new database on its
    # first start: ~30 s on a busy 2-core machine, past Prefect's default 20 s wait
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    argv = sys.argv[1:] if argv is None else list(argv)
    group = build_command(argv[0] if argv else None)
    if not argv and os.environ.get(COMPLETE_VAR):  # the shell asks for completions
        return run_group(group, argv)
    if not argv:
        run_group(group, ["--help"])
        fail(f"{PROG}: error: a command is required (see the list above)")
        return 2
    command = argv[0] if argv[0] in group.commands else None
    try:
        return run_group(group, argv, command)
    except UserError as exc:
        fail(f"{PROG} {command}: error: {exc}")
        return 2
    except Interrupted:
        fail(f"{PROG} {command}: interrupted")
        return 130
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        where = f": {os.fsdecode(exc.filename)}" if exc.filename else ""
        fail(f"{PROG} {command}: error: {exc.strerror or exc}{where}")
        return 2


def run_group(group, argv: list[str], command: str | None = None  # noqa: ANN001
              ) -> int:
    """Parse and run; click's refusals become our one line (no usage block, no panel)."""
    import typer

    from audio_wgan.params import usage_line

    try:
        rv = group.main(args=argv, prog_name=PROG, standalone_mode=False)
    except SystemExit as exc:  # shell completion and --show-completion exit themselves
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except typer.Abort:
        fail(f"{PROG}: aborted")
        return 1
    except Exception as exc:
        line = usage_line(exc, f"{PROG} {command}" if command else PROG)
        if line is None:
            raise
        fail(line)
        return 2
    return rv if isinstance(rv, int) else 0


def console() -> None:
    """The `audio-wgan` console script: `main()`, then an exit without the interpreter's
    teardown, which frees every loaded module one by one (~0.3 s once Prefect is loaded:
    a tenth of an unchanged precompute).

    The exit hook is registered before anything else, so it runs after every other atexit
    handler (Prefect's log and event drains, MLflow's, multiprocessing's, weakref
    finalizers, all registered later) and after Python has joined non-daemon threads; it
    flushes logging and stdio and leaves with main's exit code. An uncaught exception keeps
    Python's traceback and exit code 1. Tests call `main()`, which never exits the process.
    """
    code = 1  # what Python exits with after printing an uncaught exception's traceback

    def leave() -> None:
        if "logging" in sys.modules:
            sys.modules["logging"].shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed pipe: nothing left to say
                stream.flush()
        os._exit(code)

    atexit.register(leave)
    try:
        code = main()
    except SystemExit as exc:  # a string code is printed by Python and exits 1
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        raise
    except KeyboardInterrupt:  # (main turns Ctrl-C inside a command into exit 130)
        code = 130
        raise
    sys.exit(code)


if __name__ == "__main__":
    console()
