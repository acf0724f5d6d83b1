"""The Prefect server that `audio-wgan server start` leaves running, for the flow commands.

Without PREFECT_API_URL (environment or profile) Prefect starts a temporary server for every
flow command and stops it at the end (~8 s here). `audio-wgan server start` runs Prefect's
own `prefect server start --background` once and records its URL in RECORD; precompute,
train and run then send their runs to it while it answers, and otherwise fall back to the
temporary server as before. A PREFECT_API_URL of the user's always wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from flows.defaults import WORK_DIR

RECORD = Path(WORK_DIR) / "prefect-server.json"
HEALTH_TIMEOUT_S = 2.0  # a local server answers its health check in milliseconds


def answers(url: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """The Prefect API at `url` (…/api) answers its health check."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, ValueError):  # refused, timed out, not HTTP (URLError is an OSError)
        return False


def read_record(record: Path = RECORD) -> dict[str, str] | None:
    """The recorded server ({"url", "prefect_home"}), or None."""
    try:
        doc = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("url"), str) else None


def recorded_url(record: Path = RECORD) -> str | None:
    """The recorded server's URL while it answers."""
    doc = read_record(record)
    return doc["url"] if doc and answers(doc["url"]) else None


@contextlib.contextmanager
def use_recorded_server() -> Iterator[str | None]:
    """Run the block against the recorded server when no PREFECT_API_URL is configured
    and it answers (Prefect's temporary_settings, so the whole flow run sees it); yields
    the URL used, or None (Prefect's own choice: the configured server or a temporary
    one)."""
    url = None if os.environ.get("PREFECT_API_URL") else recorded_url()
    if url is None:
        yield None
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():  # the active profile names a server: it wins
        yield None
        return
    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # for the processes a flow starts (torchrun ranks)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
