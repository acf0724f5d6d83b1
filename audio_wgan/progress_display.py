"""The CLI's display of `report.progress` reports: a rich progress bar with ETA on a
terminal, the jobs' own plain lines otherwise (a pipe, a log, a test), nothing when quiet.

rich is imported only when a bar is drawn, so the quick commands never pay for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Collection, Iterator
from typing import Any, TextIO

from report.progress import Progress, sink

UNITS = {"precompute": "files", "train": "epochs", "render": "clips", "evaluate": "stages"}


def wants_bar(stream: TextIO) -> bool:
    """A person watches `stream`: a terminal that can redraw a line."""
    return stream.isatty() and os.environ.get("TERM", "") != "dumb"


@contextlib.contextmanager
def shown(quiet: bool = False, lines: TextIO | None = None,
          kinds: Collection[str] | None = None) -> Iterator[None]:
    """Show the reports (of `kinds`, default all) made while the block runs: a bar on
    stderr when it is a terminal, else each report's line on `lines` (default stderr);
    nothing when `quiet`."""
    if quiet:
        yield
        return
    out = lines or sys.stderr
    draw: Callable[[Progress], None]

    def plain(p: Progress) -> None:
        if p.done and p.note:  # the start (0 done) is the bar's; a log needs no line for it
            print(p.note, file=out, flush=True)

    def wanted(p: Progress) -> None:
        if kinds is None or p.kind in kinds:
            draw(p)

    with contextlib.ExitStack() as stack:
        draw = stack.enter_context(_bars()) if wants_bar(sys.stderr) else plain
        stack.enter_context(sink(wanted))
        yield


@contextlib.contextmanager
def _bars() -> Iterator[Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import (
        Progress as Bars,
    )

    bars = Bars(TextColumn("{task.description}", markup=False), BarColumn(bar_width=24),
                MofNCompleteColumn(), TextColumn("{task.fields[unit]}", markup=False),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("{task.fields[note]}", markup=False),
                console=Console(file=sys.stderr), transient=False)
    tasks: dict[str, Any] = {}

    def draw(p: Progress) -> None:
        # the bar shows kind, count and unit: the note keeps what is left of the line
        unit = UNITS.get(p.kind, "")
        note = p.note.removeprefix(f"{p.kind}: ").removeprefix(f"{p.done}/{p.total} {unit}")
        note = note.lstrip(", ")
        if p.kind not in tasks:
            tasks[p.kind] = bars.add_task(p.kind, total=max(p.total, 1), completed=p.done,
                                          unit=unit, note=note)
        else:
            bars.update(tasks[p.kind], total=max(p.total, 1), completed=p.done, note=note)

    with bars:
        yield draw
