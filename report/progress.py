"""Progress of the long jobs (precompute files, training epochs, rendered clips, evaluation
stages), reported once by the job and shown wherever someone looks.

A job calls `report(kind, done, total, note)`; that goes to

- every sink installed in this process with `sink(fn)` (the CLI installs one: a rich
  progress bar with ETA on a terminal, the plain `note` lines otherwise), and
- a Prefect progress artifact `<kind>-progress`, one per flow run and kind, when the call
  runs inside a flow or task run (updated at most every ARTIFACT_EVERY_S, and at the end).

Nothing here may fail a job: a sink or the API raising is ignored. Importing this module
imports no Prefect (the CLI imports it before it knows whether a flow runs).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from report.run_context import in_prefect_run

ARTIFACT_EVERY_S = 3.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One report: `done` of `total` units of `kind`; `note` is the line a log shows."""

    kind: str
    done: int
    total: int
    note: str = ""
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.done >= self.total


Sink = Callable[[Progress], None]
_sinks: list[Sink] = []
_lock = threading.Lock()  # reports may come from a worker thread
_artifacts: dict[tuple[str, str], list[Any]] = {}  # (flow run, kind) -> [artifact id, last]


@contextlib.contextmanager
def sink(fn: Sink) -> Iterator[None]:
    """Send every report made in this process to `fn` while the block runs."""
    with _lock:
        _sinks.append(fn)
    try:
        yield
    finally:
        with _lock:
            _sinks.remove(fn)


def has_sinks() -> bool:
    return bool(_sinks)


def report(kind: str, done: int, total: int, note: str = "", echo: bool = False,
           **fields: Any) -> None:
    """Report progress. `echo`: print `note` on stdout when no sink listens in this process
    (a job run outside the CLI, e.g. a torchrun rank, still shows its lines)."""
    event = Progress(kind, int(done), int(total), note, fields)
    with _lock:
        sinks = list(_sinks)
    for fn in sinks:
        try:
            fn(event)
        except Exception:  # noqa: BLE001 - a display must never stop the job
            log.debug("progress sink failed", exc_info=True)
    if echo and not sinks and note:
        print(note, file=sys.stdout, flush=True)
    _to_artifact(event)


def _to_artifact(event: Progress) -> None:
    """Create or update the run's progress artifact (inside a Prefect run only)."""
    try:
        if not in_prefect_run():
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.runtime import flow_run

        key = (str(flow_run.id or ""), event.kind)
        pct = 100.0 * min(event.done, event.total) / max(event.total, 1)
        now = time.monotonic()
        with _lock:
            entry = _artifacts.get(key)
        if entry is None:
            aid = create_progress_artifact(pct, key=f"{event.kind}-progress",
                                           description=event.note or event.kind)
            with _lock:
                _artifacts[key] = [aid, now]
        elif event.finished or now - entry[1] >= ARTIFACT_EVERY_S:
            entry[1] = now
            update_progress_artifact(entry[0], pct, description=event.note or None)
    except Exception:  # noqa: BLE001 - no API, an old server: progress is optional
        log.debug("progress artifact failed", exc_info=True)
