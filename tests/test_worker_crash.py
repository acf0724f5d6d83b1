"""A worker lost in the middle of training (SIGKILL of the worker and its flow-run process,
like a machine going away): the run ends Crashed, and running the deployment again on a new
worker resumes from the last checkpoint instead of starting over.

Prefect's server does not notice a dead run by itself: it needs flow-run heartbeats and an
automation (`scripts/zombie_automation.py`, installed by `scripts/serve.sh`), which takes
~30 s + 90 s. The default test therefore marks the still-Running run Crashed through the
API, as a supervisor would (`prefect_services.mark_crashed`); the automation itself is
tested by the slow opt-in test below (AUDIO_WGAN_SLOW_TESTS=1).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from prefect_services import (
    ROOT,
    PrefectServer,
    alive,
    mark_crashed,
    prefect_server,
    prefect_worker,
    tail,
    wait_flow_run,
)
from registry_fixtures import fresh_mlflow

from clips.demo import write_demo_data
from storage import fault_points
from storage.checkpoints import list_checkpoints, verify_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TINY_MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 32, "frames": 32}


def _run_id(output: str) -> str:
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert m, output
    return m.group(1)


def _epoch(path: Path) -> int:
    return int(path.stem.split("_")[-1])


def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: PrefectServer
           ) -> tuple[str, dict, dict, Path]:
    """A tiny store, the train/demo deployment, the worker env and the run parameters."""
    from flows.precompute import precompute

    data, store, ckpt = tmp_path / "clips", tmp_path / "mels.zarr", tmp_path / "ckpt"
    write_demo_data(data, clips_per_class=3)
    mlflow_uri = fresh_mlflow(tmp_path, monkeypatch)  # pre-migrated: saves ~10 s
    env = {"MLFLOW_TRACKING_URI": mlflow_uri,
           "AUDIO_WGAN_ARTIFACT_ROOT": str(tmp_path / "mlartifacts"),
           "PREFECT_WORKER_QUERY_SECONDS": "2", "OMP_NUM_THREADS": "1",
           "PREFECT_LOGGING_LEVEL": "INFO"}
    params = {"store": str(store), "preset": "tiny", "batch_size": 16, "checkpoint_every": 1,
              "checkpoint_dir": str(ckpt), "resume": True, "register": False,
              "device": "cpu", "seed": 3}
    server.ensure_pool()
    with server.settings():
        precompute(data_dir=str(data), store=str(store), mel=TINY_MEL)
    server.cli("deploy", "--name", "train/demo", timeout=300)
    return mlflow_uri, env, params, ckpt


HOLD_EPOCH = 3  # the kill comes during epoch 3: checkpoints 1 and 2 are complete


def _kill_mid_training(server: PrefectServer, env: dict, params: dict, ckpt: Path,
                       settle_s: float = 0.0) -> str:
    """Start a (practically endless) training run and SIGKILL its worker and flow-run
    process while the run is in epoch HOLD_EPOCH (plus settle_s); return the flow run id.

    The moment is a fault point, not the clock: the flow-run process stops at the end of
    epoch HOLD_EPOCH, before its checkpoint, says so through a marker file and waits there
    for the kill (storage.fault_points' hold), however fast or loaded the machine is.
    """
    marker = ckpt.parent / "held"
    env = {**env, fault_points.HOLD_ENV: f"block-epoch{HOLD_EPOCH}:1",
           fault_points.HOLD_FILE_ENV: str(marker)}
    with prefect_worker(server, env=env, name="doomed") as worker:
        out = server.cli("deployment", "run", "train/demo",
                         "--params", json.dumps({**params, "epochs": 100000}))
        run_id = _run_id(out.stdout)
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert time.monotonic() < deadline, f"never reached the hold\n{tail(worker.log)}"
            assert worker.proc.poll() is None, f"the worker died\n{tail(worker.log)}"
            time.sleep(0.2)
        time.sleep(settle_s)
        held = int(marker.read_text())
        assert held in worker.flow_run_pids(), "the held process is not the worker's"
        killed = worker.kill_hard()
    assert held in killed
    deadline = time.monotonic() + 10
    while [p for p in killed if alive(p)]:
        assert time.monotonic() < deadline, "a killed process survived"
        time.sleep(0.1)
    return run_id


def test_killed_worker_crashes_run_and_next_run_resumes(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    with prefect_server(tmp_path / "prefect") as server:
        mlflow_uri, env, params, ckpt = _setup(tmp_path, monkeypatch, server)
        first = _kill_mid_training(server, env, params, ckpt)
        # killed in epoch 3: epochs 1 and 2 are checkpointed, each verifies, nothing newer
        assert [_epoch(p) for p in list_checkpoints(ckpt)] == [1, 2]
        for p in list_checkpoints(ckpt):
            verify_checkpoint(p)
        last = HOLD_EPOCH - 1

        # nothing reports for the dead run: give the server a moment, then supervise
        time.sleep(5)
        found, state = mark_crashed(server, first, "worker and flow-run process were killed")
        print(f"killed run was {found} on the server; now {state}")
        assert found in ("RUNNING", "CRASHED") and state == "CRASHED"

        # the same deployment on a new worker continues from the last checkpoint
        with prefect_worker(server, env=env, name="replacement") as worker2:
            out = server.cli("deployment", "run", "train/demo",
                             "--params", json.dumps({**params, "epochs": last + 2}))
            second = _run_id(out.stdout)
            run = wait_flow_run(server, second, timeout=240, logs=[worker2.log])
            assert run.state.type.value == "COMPLETED", tail(worker2.log)

    assert _epoch(list_checkpoints(ckpt)[-1]) == last + 2
    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("audio-wgan")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    assert len(runs) == 2
    resumed = runs[0]
    assert resumed.data.params["start_mode"] == "resume"
    assert int(resumed.data.params["start_epoch"]) == last
    assert resumed.data.tags["resumed_from"].endswith(f"epoch_{last:05d}.pt")
    assert resumed.data.tags["prefect.flow_run_id"] == second
    assert runs[1].data.params["start_mode"] == "fresh"


@pytest.mark.skipif(os.environ.get("AUDIO_WGAN_SLOW_TESTS") != "1",
                    reason="~4 min: heartbeats every 30 s, crash after 90 s of silence")
def test_zombie_automation_crashes_a_lost_run(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """With heartbeats on and scripts/zombie_automation.py installed, the server itself
    marks the lost run Crashed, with no supervisor."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from zombie_automation import ensure_zombie_automation

    with prefect_server(tmp_path / "prefect") as server:
        _, env, params, ckpt = _setup(tmp_path, monkeypatch, server)
        with server.settings():
            first_id = ensure_zombie_automation(90)
            assert ensure_zombie_automation(90) == first_id  # idempotent
        env = {**env, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
        run_id = _kill_mid_training(server, env, params, ckpt, settle_s=35)  # >= 1 heartbeat
        run = wait_flow_run(server, run_id, timeout=240)
        assert run.state.type.value == "CRASHED"
        assert "No heartbeat" in (run.state.message or "")
