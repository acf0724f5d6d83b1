"""The Prefect server a flow command talks to.

In this order: a PREFECT_API_URL of the user's (environment or profile) always wins; else
the server that `audio-wgan server start` runs (Prefect's own `prefect server start
--background`) and records in RECORD, while it answers; else a server for this command
alone (`CommandServer`). That last one replaces Prefect's temporary server, which the
client starts only when the flow calls the API, after importing the whole server
application in the client process (~3.5 s here) and then waiting ~5 s for it: the command
starts Prefect's public `prefect server start` the moment it knows it needs one, and its
start-up runs beside the command's own imports. It serves what the temporary server serves
(the run, task and event recording services, not the scheduler and the others that act on
other runs) and stops with the command; when it cannot start, or AUDIO_WGAN_COMMAND_SERVER
is 0, Prefect's temporary server takes over as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from flows.defaults import WORK_DIR
from gan.child_processes import die_with

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


# The services of `prefect server start` that Prefect's temporary server does not run: they
# act on runs other than this command's (scheduled deployments, late or paused runs, work
# pools), which the user's own server (or none) is there to handle.
NOT_EPHEMERAL_SERVICES = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "REPOSSESSOR",
                          "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS", "CLEANUP_RECONCILER")
COMMAND_SERVER_ENV = {
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in NOT_EPHEMERAL_SERVICES},
}
COMMAND_SERVER_VAR = "AUDIO_WGAN_COMMAND_SERVER"  # "0": leave it to Prefect's temporary one
STOP_TIMEOUT_S = 5.0  # Prefect's own wait for its temporary server to stop


class CommandServer:
    """`prefect server start` on a free loopback port, for one command: started at once,
    waited for only when the flow is about to run, stopped with the command (and, on Linux,
    by the kernel when the command dies first)."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process, self.url = process, url

    @classmethod
    def start(cls) -> CommandServer | None:
        """Started, or None when it cannot be (Prefect then starts its own)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                "--port", str(port)]
        env = {**os.environ, **COMMAND_SERVER_ENV}
        env.pop("PREFECT_API_URL", None)
        try:
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       preexec_fn=die_with(os.getpid()))
        except OSError:
            return None
        return cls(process, f"http://127.0.0.1:{port}/api")

    def ready(self, timeout: float) -> bool:
        """Whether it answers within `timeout` s (False once it has exited: a port taken
        meanwhile, a database it cannot open)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if answers(self.url, timeout=0.5):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def flow_server(prepare: Callable[[bool], object] = lambda waits: None
                ) -> Iterator[str | None]:
    """Run the block against the server it should talk to (see the module docstring);
    yields the URL set for it, or None (Prefect's own choice: the configured server, or its
    temporary one). `prepare(waits)` (the command's imports) runs while a command server
    starts; `waits`: whether one is starting (the command will wait for it)."""
    own = os.environ.get(COMMAND_SERVER_VAR, "").strip() or "1"
    if own not in ("0", "1"):
        from audio_wgan.command import UserError

        raise UserError(f"{COMMAND_SERVER_VAR}={own[:40]!r} is not 0 or 1; fix or unset it")
    if os.environ.get("PREFECT_API_URL"):
        prepare(False)
        yield None
        return
    url = recorded_url()
    wanted = url is None and own == "1"
    server = CommandServer.start() if wanted else None  # before Prefect is even imported
    try:
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        )

        if PREFECT_API_URL.value():  # the active profile names a server: it wins
            url = None
            if server is not None:
                server.stop()
                server = None
        prepare(server is not None)
        if server is not None:
            if server.ready(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()):
                url = server.url
            else:  # Prefect's temporary server takes over: this one goes now
                server.stop()
                server = None
        if url is None:
            yield None
            return
        with _api_url(url):
            yield url
    finally:
        if server is not None:
            server.stop()


@contextlib.contextmanager
def _api_url(url: str) -> Iterator[None]:
    """PREFECT_API_URL = `url` for this process (Prefect's temporary_settings, so the whole
    flow run sees it) and the processes it starts (torchrun ranks)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
