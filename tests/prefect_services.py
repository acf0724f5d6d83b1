"""Real Prefect services for integration tests: `prefect server start` and `prefect worker start`.

These run as subprocesses on loopback with their own PREFECT_HOME and SQLite database, the
way a user runs them, so the tests exercise `prefect deploy`, the process worker and the
scheduler for real. Every process is started in its own session and stopped (with all its
descendants, which the process worker also puts in sessions of their own) on exit, also when
the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
POOL = "audio-wgan-local"

# Settings that leak in from a developer's shell or the pytest process and would point the
# child processes at another server, profile or database.
_SCRUB_PREFIXES = ("PREFECT_", "MLFLOW_")


def free_port() -> int:
    """A free TCP port on loopback (racy in theory, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Direct children of pid, from /proc (psutil is not a dependency)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ..." where comm may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    """All descendants of pid (children first, depth-first)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in _children(stack.pop()):
            found.append(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> list[int]:
    """Send sig to proc, its process group and every descendant (they may be in other
    sessions); returns the pids signalled."""
    pids = [proc.pid, *descendants(proc.pid)]
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except OSError:
            pass
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    return pids


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the whole tree, wait up to `grace` seconds, then SIGKILL what is left."""
    if proc.poll() is not None and not descendants(proc.pid):
        return
    pids = kill_tree(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        if not any(alive(p) for p in pids):
            break
        time.sleep(0.2)
    kill_tree(proc, signal.SIGKILL)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without PREFECT_*/MLFLOW_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def tail(path: Path, n: int = 4000) -> str:
    """The last n characters of a log file, for assertion messages."""
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"<no log at {path}>"


@dataclass
class PrefectServer:
    """A running `prefect server start`; `env` points any child process at it."""

    api_url: str
    home: Path
    env: dict[str, str]
    proc: subprocess.Popen
    log: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def cli(self, *args: str, cwd: Path = ROOT, timeout: float = 180,
            env: Mapping[str, str] | None = None, check: bool = True
            ) -> subprocess.CompletedProcess:
        """Run `prefect --no-prompt ARGS` against this server; raise with the output on error."""
        full_env = {**self.env, "PWD": str(cwd), **(env or {})}
        res = subprocess.run([PREFECT, "--no-prompt", *args], cwd=cwd, env=full_env,
                             capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(
                f"prefect {' '.join(args)} exited {res.returncode}\n"
                f"--- stdout ---\n{res.stdout[-4000:]}\n--- stderr ---\n{res.stderr[-4000:]}\n"
                f"--- server log ---\n{tail(self.log, 2000)}")
        return res

    def ensure_pool(self, pool: str = POOL) -> None:
        """Create the process work pool unless it exists (what scripts/serve.sh does)."""
        if self.cli("work-pool", "inspect", pool, check=False).returncode != 0:
            self.cli("work-pool", "create", pool, "--type", "process")

    @contextmanager
    def settings(self) -> Iterator[None]:
        """Point this (pytest) process's Prefect client at the server."""
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_LOGGING_TO_API_ENABLED,
            temporary_settings,
        )

        # logs of in-process runs stay local: a log shipper still flushing after the server
        # stopped would only print errors at interpreter exit
        with temporary_settings({PREFECT_API_URL: self.api_url,
                                 PREFECT_LOGGING_TO_API_ENABLED: False}):
            yield


def wait_http_ok(url: str, proc: subprocess.Popen, log: Path, timeout: float, name: str,
                 body_ok: Callable[[bytes], bool] | None = None) -> None:
    """Poll `url` until it answers 200 (and `body_ok(body)`, if given) while `proc` lives;
    RuntimeError if the process exits, TimeoutError after `timeout`, both with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200 and (body_ok is None or body_ok(r.read())):
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{name} did not answer {url} within {timeout:.0f} s:\n{tail(log)}")


@contextmanager
def prefect_server(tmp: Path, startup_timeout: float = 180,
                   extra_env: Mapping[str, str] | None = None) -> Iterator[PrefectServer]:
    """Start `prefect server start` on a free loopback port with state under tmp."""
    tmp.mkdir(parents=True, exist_ok=True)
    home = tmp / "prefect-home"
    home.mkdir(exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = base_env({
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        **(extra_env or {}),
    })
    log = tmp / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            cwd=tmp, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    server = PrefectServer(api_url, home, env, proc, log)
    try:
        wait_http_ok(f"{api_url}/health", proc, log, startup_timeout, "prefect server",
                     body_ok=lambda b: json.loads(b or b"true") is True)
        yield server
    finally:
        for worker in server.workers:
            stop(worker.proc)
        stop(proc)


@dataclass
class WorkerProcess:
    """A running `prefect worker start`."""

    proc: subprocess.Popen
    log: Path
    name: str

    def flow_run_pids(self) -> list[int]:
        """Processes the worker started (the flow-run subprocesses and their children)."""
        return descendants(self.proc.pid)

    def kill_hard(self) -> list[int]:
        """SIGKILL the worker and every flow-run process it started, like a lost machine."""
        pids = kill_tree(self.proc, signal.SIGKILL)
        self.proc.wait(timeout=10)
        return pids


@contextmanager
def prefect_worker(server: PrefectServer, pool: str = POOL, cwd: Path = ROOT,
                   name: str = "test-worker", env: Mapping[str, str] | None = None,
                   log_dir: Path | None = None) -> Iterator[WorkerProcess]:
    """Start `prefect worker start --pool POOL --type process`; stopped on exit."""
    log = (log_dir or server.home.parent) / f"worker-{name}.log"
    full_env = {**server.env, "PWD": str(cwd), **(env or {})}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--name", name,
             "--install-policy", "never"],
            cwd=cwd, env=full_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    worker = WorkerProcess(proc, log, name)
    server.workers.append(worker)
    try:
        yield worker
    finally:
        stop(proc)


def wait_flow_run(server: PrefectServer, flow_run_id: str, timeout: float = 300,
                  until: Sequence[str] | None = None, logs: Sequence[Path] = ()) -> object:
    """Poll until the flow run reaches a final state (or one of `until` state types);
    return the FlowRun. Raises TimeoutError with the worker logs."""
    from prefect.client.orchestration import get_client

    wanted = set(until or ())
    deadline = time.monotonic() + timeout
    with server.settings(), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            state = run.state
            if state is not None and (state.type.value in wanted
                                      or (not wanted and state.is_final())):
                return run
            if time.monotonic() > deadline:
                detail = "\n".join(f"--- {p.name} ---\n{tail(p)}" for p in logs)
                raise TimeoutError(
                    f"flow run {flow_run_id} still {state and state.type.value} "
                    f"after {timeout:.0f}s\n{detail}")
            time.sleep(1.0)


def mark_crashed(server: PrefectServer, flow_run_id: str, message: str) -> tuple[str, str]:
    """What a supervisor does for a run whose infrastructure vanished: if the server still
    shows it Running/Pending, set it Crashed (forced: no process is left to report).
    Returns (state type found, state type after)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with server.settings(), get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        found = run.state.type.value if run.state is not None else "NONE"
        if run.state is not None and run.state.is_final():
            return found, found
        client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
        return found, client.read_flow_run(flow_run_id).state.type.value


@contextlib.contextmanager
def http_server(cmd: list[str], port: int, env: Mapping[str, str], cwd: Path, name: str
                ) -> Iterator[str]:
    """A server process (`cmd`, listening on loopback `port`), up once GET /ping answers;
    yields its base URL and stops it (and its children) afterwards."""
    log_path = cwd / f"{name.replace(' ', '-')}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(env),
                                cwd=cwd, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http_ok(f"{url}/ping", proc, log_path, 120, name)
            yield url
        finally:
            stop(proc, grace=15)
