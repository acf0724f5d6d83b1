"""The one-line error training raises, and the one line of any exception.

Pure Python, so the CLI and the flows' parameter checks can raise and catch it without
importing torch; every room above turns an exception into one line the same way.
"""

from __future__ import annotations

from typing import Any


class TrainingError(ValueError):
    """Training cannot start or go on; one line, printed as is by the CLI."""


def first_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, else its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(x: object, limit: int | None = None) -> str:
    """An exception (or any text) as one line that keeps every line of its message, joined
    by spaces, else its type's name: for errors whose later lines carry the detail (zarr's,
    libsndfile's). Cut to `limit` characters ("..." at the end) when one is given."""
    text = " ".join(str(x).split()) or type(x).__name__
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def invalid_parameter(exc: Any) -> str:
    """A pydantic ValidationError of a flow's parameters as one line naming the first bad
    one: "invalid NAME: why (got VALUE)" ("invalid parameters: why" for a rule between
    several)."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "parameters"
    msg = str(err.get("msg", "bad value")).removeprefix("Value error, ")
    got = f" (got {err['input']!r})" if "input" in err and loc != "parameters" else ""
    return one_line(f"invalid {loc}: {msg}{got}", limit=300)
