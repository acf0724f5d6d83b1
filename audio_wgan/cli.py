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
]


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audio-wgan",
        description="Class-conditional WGAN-GP audio generator (Zarr mel store, Prefect, MLflow).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"audio_wgan.cmd_{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"audio_wgan.cmd_{name}":
                continue  # command not built yet
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"audio-wgan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"audio-wgan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m audio_wgan.cli`: run the canonical module's main, so that the UserError
    # the commands import (audio_wgan.cli.UserError) is the one main() catches
    from audio_wgan.cli import main as canonical_main

    sys.exit(canonical_main())
