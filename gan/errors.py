"""The one-line error training raises, and the one line of any exception.

Pure Python, so the CLI and the flows' parameter checks can raise and catch it without
importing torch; every room above turns an exception into one line the same way.
"""

from __future__ import annotations


class TrainingError(ValueError):
    """Training cannot start or go on; one line, printed as is by the CLI."""


def first_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, else its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def all_lines(exc: BaseException) -> str:
    """An exception as one line that keeps every line of its message (joined by spaces),
    else its type's name: for errors whose later lines carry the detail (zarr's)."""
    return " ".join(str(exc).split()) or type(exc).__name__
