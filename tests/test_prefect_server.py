"""`audio-wgan server start|stop|status` with a real Prefect server: a flow command sends its
run to the recorded server (no temporary server), and forgets it once it is stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "audio_wgan.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=600)


def flow_runs(url: str) -> list:
    code = ("from prefect.client.orchestration import get_client\n"
            "import json\n"
            "with get_client(sync_client=True) as c:\n"
            "    print(json.dumps([[r.flow_id.hex, r.state_name] for r in c.read_flow_runs()]"
            "))\n"
            "    print(json.dumps({f.id.hex: f.name for f in c.read_flows()}))\n")
    env = {**os.environ, "PREFECT_API_URL": url}
    out = subprocess.run([sys.executable, "-c", code], env=env, text=True,
                         capture_output=True, timeout=300, check=True)
    runs, flows = (json.loads(x) for x in out.stdout.strip().splitlines()[-2:])
    return [(flows[fid], state) for fid, state in runs]


def test_flow_command_reuses_the_recorded_server(tmp_path: Path, write_tone) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(ROOT),
                "PREFECT_PROFILES_PATH": str(tmp_path / "profiles.toml")})
    for i in range(2):
        write_tone(f"data/a/t{i}.wav", freq=300 + 100 * i)
        write_tone(f"data/b/t{i}.wav", freq=900 + 100 * i)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    started = cli(["server", "start", "--port", str(port)], tmp_path, env)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        record = json.loads((tmp_path / "work" / "prefect-server.json").read_text())
        assert record["url"] == url
        status = cli(["server", "status"], tmp_path, env)
        assert status.returncode == 0 and url in status.stdout

        for _ in range(2):  # a new store, then an unchanged re-run
            done = cli(["precompute", "data", "--store", "mels.zarr", "--json"], tmp_path, env)
            assert done.returncode == 0, done.stderr[-2000:]
        runs = flow_runs(url)
        assert runs == [("precompute", "Completed")] * 2
        again = cli(["server", "start", "--port", str(port)], tmp_path, env)
        assert again.returncode == 0 and "already answers" in again.stdout
    finally:
        stopped = cli(["server", "stop"], tmp_path, env)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert not (tmp_path / "work" / "prefect-server.json").exists()
    gone = cli(["server", "status"], tmp_path, env)
    assert gone.returncode == 2
    assert gone.stderr.strip().splitlines()[-1].startswith("audio-wgan server: error: no server")


def test_a_configured_api_url_wins(tmp_path: Path) -> None:
    """PREFECT_API_URL wins over the record: the command is refused in one line naming it
    (nothing listens there), and a recorded server that does not answer is reported."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "prefect-server.json").write_text(
        json.dumps({"url": f"http://127.0.0.1:{free_port()}/api", "prefect_home": "x"}))
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    out = cli(["precompute", str(tmp_path), "--store", str(tmp_path / "s.zarr")], tmp_path,
              env)
    assert out.returncode == 2
    assert env["PREFECT_API_URL"] in out.stderr.strip().splitlines()[-1]
    status = cli(["server", "status"], tmp_path, env)
    assert status.returncode == 2
    assert "does not answer" in status.stderr.strip().splitlines()[-1]


def bare_env(tmp_path: Path) -> dict[str, str]:
    """No Prefect server configured or recorded: a fresh PREFECT_HOME and profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(ROOT),
                "PREFECT_PROFILES_PATH": str(tmp_path / "profiles.toml")})
    return env


def servers_of(home: Path) -> list[int]:
    """Pids of the living `prefect server start` processes whose PREFECT_HOME is `home`
    (not the command's forkserver or resource tracker, which share its environment and
    leave on their own once it is gone)."""
    mark = f"PREFECT_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        serves = b"server" in argv and b"start" in argv and b"prefect" in argv
        if serves and mark in environ and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def test_a_flow_command_without_a_server_runs_on_a_server_of_its_own(
        tmp_path: Path, write_tone) -> None:
    """No server configured or recorded: each command starts `prefect server start` for
    itself and stops it at the end; its runs are in Prefect's database (as they were with
    Prefect's temporary server): read back through a server started afterwards. With
    AUDIO_WGAN_COMMAND_SERVER=0 Prefect's temporary server runs it, as before."""
    env = bare_env(tmp_path)
    env["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"  # no temporary server to fall back on
    for i in range(2):
        write_tone(f"data/a/t{i}.wav", freq=300 + 100 * i)
        write_tone(f"data/b/t{i}.wav", freq=900 + 100 * i)
    for _ in range(2):  # a new store, then an unchanged re-run
        done = cli(["precompute", "data", "--store", "mels.zarr", "--json"], tmp_path, env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert servers_of(tmp_path / "prefect-home") == []  # stopped with the command
    refused = cli(["precompute", "data", "--store", "mels.zarr"], tmp_path,
                  {**env, "AUDIO_WGAN_COMMAND_SERVER": "0"})
    assert refused.returncode != 0 and "PREFECT_API_URL" in refused.stderr  # Prefect's own
    temporary = cli(["precompute", "data", "--store", "mels.zarr"], tmp_path,
                    {**env, "AUDIO_WGAN_COMMAND_SERVER": "0",
                     "PREFECT_SERVER_EPHEMERAL_ENABLED": "true"})
    assert temporary.returncode == 0, temporary.stderr[-2000:]
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    started = cli(["server", "start", "--port", str(port)], tmp_path, env)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        assert flow_runs(url) == [("precompute", "Completed")] * 3
    finally:
        cli(["server", "stop"], tmp_path, env)


def test_a_command_server_dies_with_its_command(tmp_path: Path) -> None:
    """A command killed outright (SIGKILL) leaves no server behind: the kernel sends it
    SIGTERM (PR_SET_PDEATHSIG)."""
    code = ("from audio_wgan.prefect_server import CommandServer\n"
            "import time\n"
            "s = CommandServer.start()\n"
            "print(s.process.pid, flush=True)\n"
            "assert s.ready(300)\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")
    env = bare_env(tmp_path)
    command = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(command.stdout.readline())
        assert command.stdout.readline().strip() == "ready"
        assert server_pid in servers_of(tmp_path / "prefect-home")
        command.kill()
        command.wait()
        deadline = time.monotonic() + 120  # a bound on a hang, not a measurement
        while server_pid in servers_of(tmp_path / "prefect-home"):
            assert time.monotonic() < deadline, "the server outlived its command"
            time.sleep(0.2)
    finally:
        command.kill()
        for pid in servers_of(tmp_path / "prefect-home"):
            os.kill(pid, signal.SIGKILL)


def test_a_command_server_that_cannot_start_leaves_it_to_prefect(tmp_path: Path) -> None:
    """A server that exits before it answers (a port taken meanwhile, say): the block runs
    with no URL set, so Prefect starts its temporary server as it always did."""
    code = ("import subprocess, sys\n"
            "from audio_wgan import prefect_server as ps\n"
            "dead = subprocess.Popen([sys.executable, '-c', 'raise SystemExit(3)'])\n"
            "ps.CommandServer.start = classmethod(lambda cls: cls(dead, 'http://127.0.0.1:9/api'))\n"
            "with ps.flow_server() as url:\n"
            "    from prefect.settings import PREFECT_API_URL\n"
            "    print(url, PREFECT_API_URL.value())\n"
            "print(dead.returncode)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=bare_env(tmp_path),
                         text=True, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["None", "None", "3"]


def test_a_profile_that_names_a_server_wins_over_a_command_server(tmp_path: Path) -> None:
    """The active Prefect profile's PREFECT_API_URL wins: the command talks to it (here it
    does not answer: one line naming it) and the server it started on the chance that none
    was configured is stopped."""
    env = bare_env(tmp_path)
    url = f"http://127.0.0.1:{free_port()}/api"
    (tmp_path / "profiles.toml").write_text(
        f'active = "mine"\n\n[profiles.mine]\nPREFECT_API_URL = "{url}"\n')
    out = cli(["precompute", str(tmp_path), "--store", str(tmp_path / "s.zarr")], tmp_path,
              env)
    assert out.returncode == 2
    assert url in out.stderr.strip().splitlines()[-1]
    assert servers_of(tmp_path / "prefect-home") == []
