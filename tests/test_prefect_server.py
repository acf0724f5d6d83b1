"""`audio-wgan server start|stop|status` with a real Prefect server: a flow command sends its
run to the recorded server (no temporary server), and forgets it once it is stopped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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
