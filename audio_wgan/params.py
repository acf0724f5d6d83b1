"""Command-line options derived from the shared ranges (`gan.limits`), and click's refusals
as one line.

Options built here refuse a bad value while the arguments are parsed, in one line
("audio-wgan generate: error: argument --seed: ..."), before any work or any write.
No `from __future__ import annotations` here: typer reads the annotations of the
completion callbacks at run time.
"""

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from gan.limits import SEED, Range, RangeError


def ranged(r: Range, option: str) -> Callable[[Any], int]:
    """A typer `parser=` that parses an integer and checks it against `r`."""

    def parse(text: Any) -> int:
        try:
            if isinstance(text, int):  # click passes a default through the parser too
                return r.check(text, option)
            return r.parse(str(text), option)
        except RangeError as exc:
            # the refusal is prefixed "argument OPTION: ", so the message starts after it
            raise typer.BadParameter(str(exc).removeprefix(option).strip()) from None

    parse.__name__ = r.name
    return parse


def choice(*names: str) -> dict[str, Any]:
    """Keyword arguments of a typer.Option taking one of `names` (kept as a str, listed in
    the help and completed by the shell)."""

    def parse(text: Any) -> str:
        if text in names:
            return str(text)
        raise typer.BadParameter(f"invalid choice: {str(text)[:60]!r} (choose from "
                                 f"{', '.join(repr(n) for n in names)})")

    def complete(incomplete: str) -> list[str]:
        return [n for n in names if n.startswith(incomplete)]

    return {"parser": parse, "metavar": "[" + "|".join(names) + "]",
            "autocompletion": complete}


def seed_option(default: int, help: str | None = None) -> Any:
    """`--seed S`, the same range on every command."""
    return typer.Option("--seed", parser=ranged(SEED, "--seed"), metavar="S",
                        help=help or f"random seed, 0..2**63-1 (default {default})",
                        show_default=False)


def model_option() -> Any:
    """`--model URI` of generate, render and evaluate (required)."""
    return typer.Option("--model", metavar="URI", show_default=False,
                        help="MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION, "
                        "runs:/ID/model) or a local bundle directory")


def option(*decls: str, help: str = "", **kw: Any) -> Any:
    """typer.Option whose default typer shows only when the help text does not already."""
    kw.setdefault("show_default", "default" not in help)
    return typer.Option(*decls, help=help, **kw)


def output_dir(path: str | Path, option: str) -> Path:
    """The folder `path` can be created (or is one): nothing on its way is a regular file.

    Checked before any work, so that a run never fails on its first write after minutes
    of training or rendering. Raises UserError (one line).
    """
    from audio_wgan.command import UserError
    from storage.output_paths import OutputPathError, check_output_dir

    try:
        return check_output_dir(path, option)
    except OutputPathError as exc:
        raise UserError(str(exc)) from None


def usage_line(exc: BaseException, where: str) -> str | None:
    """The one line for a refusal of click's parser (None: not one of them); `where` names
    the command when click's error does not carry its context.

    A bad value: `prog CMD: error: argument --opt: reason`; a missing option:
    `... error: the following arguments are required: --opt`; anything else click refuses
    (unknown option or command, extra argument): its own message, on one line.
    """
    errors = sys.modules[typer.BadParameter.__module__]  # typer's click (vendored or not)
    if not isinstance(exc, errors.UsageError):
        return None
    ctx = exc.ctx
    where = ctx.command_path if ctx is not None else where
    param = getattr(exc, "param", None)
    if isinstance(exc, errors.MissingParameter) and param is not None:
        reason = f"the following arguments are required: {hint(param)}"
    elif isinstance(exc, errors.BadParameter) and param is not None:
        reason = f"argument {hint(param)}: {exc.message}"
    else:
        reason = exc.format_message()
    return f"{where}: error: {' '.join(reason.split())}"


def hint(param: Any) -> str:
    """How argparse named a parameter: `-n/--count`, or an argument's metavar."""
    opts = [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
    if getattr(param, "param_type_name", "") == "argument" or not opts:
        return param.metavar or (param.name or "").upper()
    return "/".join(opts)
