"""Command-line options derived from the shared ranges (`gan.limits`) and output folders.

Options built here refuse a bad value while the arguments are parsed, in argparse's one
line ("audio-wgan generate: error: argument --seed: ..."), before any work or any write.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from gan.limits import SEED, Range, RangeError


def ranged(r: Range, option: str) -> Callable[[str], int]:
    """An argparse `type=` that parses an integer and checks it against `r`."""

    def parse(text: str) -> int:
        try:
            return r.parse(text, option)
        except RangeError as exc:
            # argparse prefixes "argument OPTION: ", so the message starts after the name
            raise argparse.ArgumentTypeError(str(exc).removeprefix(option).strip()) from None

    parse.__name__ = r.name  # argparse names the type in its own messages
    return parse


def add_seed(p: argparse.ArgumentParser, default: int, help: str | None = None) -> None:
    """`--seed S`, the same range on every command."""
    p.add_argument("--seed", type=ranged(SEED, "--seed"), default=default, metavar="S",
                   help=help or f"random seed, 0..2**63-1 (default {default})")


def output_dir(path: str | Path, option: str) -> Path:
    """The folder `path` can be created (or is one): nothing on its way is a regular file.

    Checked before any work, so that a run never fails on its first write after minutes
    of training or rendering. Raises UserError (one line).
    """
    from audio_wgan.cli import UserError
    from storage.output_paths import OutputPathError, check_output_dir

    try:
        return check_output_dir(path, option)
    except OutputPathError as exc:
        raise UserError(str(exc)) from None
