"""A worker lost in the middle of training (SIGKILL of the worker and its flow-run process,
like a machine going away): the run ends Crashed, and running the deployment again on a new
worker resumes from the last checkpoint instead of starting over.

Prefect's server has no built-in zombie detection (it takes a heartbeat automation), so when
the killed run still shows Running the test marks it Crashed through the API, as a supervisor
would (`prefect_services.mark_crashed`).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from prefect_services import (
    alive,
    mark_crashed,
    prefect_server,
    prefect_worker,
    tail,
    wait_flow_run,
)
from registry_fixtures import fresh_mlflow

from storage.checkpoints import list_checkpoints
from tasks.demo_data import write_demo_data

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TINY_MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 32, "frames": 32}


def _run_id(output: str) -> str:
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert m, output
    return m.group(1)


def _epoch(path: Path) -> int:
    return int(path.stem.split("_")[-1])


def test_killed_worker_crashes_run_and_next_run_resumes(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

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

    with prefect_server(tmp_path / "prefect") as server:
        server.ensure_pool()
        with server.settings():
            precompute(data_dir=str(data), store=str(store), mel=TINY_MEL)
        server.cli("deploy", "--name", "train/demo", timeout=300)

        # 1. a long run; kill its worker once a few checkpoints are on disk
        with prefect_worker(server, env=env, name="doomed") as worker:
            out = server.cli("deployment", "run", "train/demo",
                             "--params", json.dumps({**params, "epochs": 100000}))
            first = _run_id(out.stdout)
            deadline = time.monotonic() + 240
            while len(list_checkpoints(ckpt)) < 2:
                assert time.monotonic() < deadline, f"no checkpoints\n{tail(worker.log)}"
                time.sleep(0.5)
            assert worker.flow_run_pids(), "the flow run is not a child of the worker"
            killed = worker.kill_hard()
        time.sleep(1)
        assert not [p for p in killed if alive(p)], "a killed process survived"
        last = _epoch(list_checkpoints(ckpt)[-1])
        assert last >= 2

        # 2. nothing reports for the dead run: give the server a moment, then supervise
        time.sleep(5)
        found, state = mark_crashed(server, first, "worker and flow-run process were killed")
        print(f"killed run was {found} on the server; now {state}")
        assert found in ("RUNNING", "CRASHED") and state == "CRASHED"

        # 3. the same deployment on a new worker continues from the last checkpoint
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
