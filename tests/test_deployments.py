"""prefect.yaml through real services: `prefect server start`, `prefect deploy --all`, a
process worker, `prefect deployment run`; then the store, the MLflow registry and the
retrain schedule are checked where they live. Also `scripts/serve.sh` start and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect_services import (
    POOL,
    ROOT,
    alive,
    base_env,
    descendants,
    free_port,
    prefect_server,
    prefect_worker,
    tail,
    wait_flow_run,
)
from registry_fixtures import fresh_mlflow

from clips.demo import CLASSES, write_demo_data

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TINY_MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 32, "frames": 32}
CLIPS = 3  # per class: the fewest the evaluation's held-out split accepts


def _flow_run_id(output: str) -> str:
    """The UUID `prefect deployment run` prints ("UUID: ...")."""
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert m, f"no flow run id in:\n{output}"
    return m.group(1)


def test_prefect_yaml_declares_the_deployments() -> None:
    """Static contract: names, entry points, the weekly cron with a timezone, one at a time."""
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deps = {(d["entrypoint"].rsplit(":", 1)[1], d["name"]): d for d in doc["deployments"]}
    assert {("precompute", "demo"), ("train", "demo"), ("retrain", "weekly")} <= set(deps)
    for (flow_fn, _), d in deps.items():
        path, fn = d["entrypoint"].split(":")
        assert (ROOT / path).is_file() and fn == flow_fn
        assert d["work_pool"]["name"] == POOL
        assert d["pull"][0] == {"flows.deploy_steps.set_project_root": {}}
    from flows.defaults import DEMO_DATA_DIR, DEMO_MEL, STORE

    pre = deps[("precompute", "demo")]["parameters"]
    assert pre == {"data_dir": DEMO_DATA_DIR, "store": STORE, "mel": DEMO_MEL}  # no drift
    weekly = deps[("retrain", "weekly")]
    (sched,) = weekly["schedules"]
    assert sched["cron"] == "0 3 * * 1" and sched["timezone"] == "UTC"
    assert weekly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


def test_deploy_and_run_through_a_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """precompute/demo and a tiny retrain/weekly run on a real worker and leave real results."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client

    from storage.mel_store import MelStore

    data = tmp_path / "clips"
    write_demo_data(data, clips_per_class=CLIPS)
    store = tmp_path / "mels.zarr"
    mlflow_uri = fresh_mlflow(tmp_path, monkeypatch)  # pre-migrated: saves ~10 s
    worker_env = {
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "AUDIO_WGAN_ARTIFACT_ROOT": str(tmp_path / "mlartifacts"),
        "PREFECT_WORKER_QUERY_SECONDS": "2", "OMP_NUM_THREADS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    retrain_params = {
        "data_dir": str(data), "store": str(store), "preset": "tiny", "epochs": 1,
        "mel": TINY_MEL, "demo": False, "checkpoint_dir": str(tmp_path / "ckpt"),
        "samples_dir": str(tmp_path / "samples"), "batch_size": 16, "eval_per_class": 4,
        "render_per_class": 1, "device": "cpu",
    }
    with prefect_server(tmp_path / "prefect") as server:
        server.ensure_pool()
        deployed = server.cli("deploy", "--all", timeout=300)
        assert "retrain/weekly" in deployed.stdout + deployed.stderr

        # the worker starts in an unrelated folder: the pull step still finds the project
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        with prefect_worker(server, cwd=elsewhere, env=worker_env) as worker:
            pre = server.cli("deployment", "run", "precompute/demo", "--params", json.dumps(
                {"data_dir": str(data), "store": str(store), "mel": TINY_MEL}))
            pre_id = _flow_run_id(pre.stdout)
            run = wait_flow_run(server, pre_id, timeout=240, logs=[worker.log])
            assert run.state.type.value == "COMPLETED", tail(worker.log)

            opened = MelStore.open(store)
            assert opened.classes == sorted(CLASSES)
            assert opened.info()["files"] == CLIPS * len(CLASSES)
            # equal-length demo clips split into ~0.5 s examples: the same rows per clip
            n_files = CLIPS * len(CLASSES)
            assert len(opened) >= 2 * n_files and len(opened) % n_files == 0

            # train/demo on 2 gloo ranks: the worker's flow run launches torchrun itself
            ddp_ck = tmp_path / "ddp-ck"
            tr = server.cli("deployment", "run", "train/demo", "--params", json.dumps({
                "store": str(store), "preset": "tiny", "epochs": 2, "nproc": 2,
                "batch_size": 8, "checkpoint_every": 1, "checkpoint_dir": str(ddp_ck),
                "resume": False, "register": False, "render": False, "device": "cpu"}))
            run = wait_flow_run(server, _flow_run_id(tr.stdout), timeout=300,
                                logs=[worker.log])
            assert run.state.type.value == "COMPLETED", tail(worker.log)
            from storage.checkpoints import list_checkpoints, load_checkpoint

            assert [c.name for c in list_checkpoints(ddp_ck)] == ["epoch_00001.pt",
                                                                   "epoch_00002.pt"]
            state = load_checkpoint(ddp_ck / "epoch_00002.pt")
            assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
            assert (ddp_ck / "bundle" / "model.json").is_file()

            rt = server.cli("deployment", "run", "retrain/weekly",
                            "--params", json.dumps(retrain_params))
            rt_id = _flow_run_id(rt.stdout)
            run = wait_flow_run(server, rt_id, timeout=300, logs=[worker.log])
            assert run.state.type.value == "COMPLETED", tail(worker.log)

        with server.settings(), get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name("retrain/weekly")
            crons = [s.schedule.cron for s in dep.schedules if s.active]
            assert crons == ["0 3 * * 1"]
            assert dep.schedules[0].schedule.timezone == "UTC"
            assert dep.global_concurrency_limit is not None
            assert dep.global_concurrency_limit.limit == 1
            assert dep.concurrency_options.collision_strategy.value == "ENQUEUE"
            from prefect.client.schemas.filters import (
                DeploymentFilter,
                DeploymentFilterId,
                FlowRunFilter,
                FlowRunFilterState,
                FlowRunFilterStateType,
            )
            from prefect.client.schemas.objects import StateType

            scheduled = []
            for _ in range(30):  # the scheduler service fills the schedule within seconds
                scheduled = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
                if scheduled:
                    break
                time.sleep(1)
            assert scheduled, f"no scheduled retrain run\n{tail(server.log)}"
            nxt = min(r.expected_start_time for r in scheduled)
            assert nxt.weekday() == 0 and (nxt.hour, nxt.minute) == (3, 0)

    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    versions = client.search_model_versions("name='audio-wgan'")
    assert len(versions) == 1
    mv = versions[0]
    assert client.get_registered_model("audio-wgan").aliases == {"champion": mv.version}
    assert mv.tags["store_fingerprint"] == MelStore.open(store).fingerprint
    assert mv.tags["promotion_decision"] == "champion"
    # the worker ran in the project root (pull step), not where it was started
    assert not (elsewhere / "work").exists() and not (elsewhere / "mlflow.db").exists()


def test_serve_script_starts_and_stops_everything(tmp_path: Path) -> None:
    """`scripts/serve.sh`: server, worker and MLflow UI come up; SIGINT stops all of them."""
    env = base_env({
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "AUDIO_WGAN_LOG_DIR": str(tmp_path / "logs"),
    })
    # SIGINT back to its default first: a shell cannot trap a signal that was ignored when
    # it started, and a test run launched in the background (`cmd &`) ignores SIGINT
    launcher = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                "os.execvp('bash', ['bash', sys.argv[1]])")
    proc = subprocess.Popen([sys.executable, "-c", launcher, str(ROOT / "scripts" / "serve.sh")],
                            cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen: list[str] = []
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            seen.append(line)
            if "ready. Ctrl-C" in line or time.monotonic() > deadline:
                break
        text = "".join(seen)
        assert "ready. Ctrl-C" in text, text
        assert f"http://127.0.0.1:{env['PREFECT_PORT']}" in text
        assert "prefect deployment run 'retrain/weekly'" in text
        assert "crash zombie flow runs" in text  # the heartbeat automation was installed
        pids = descendants(proc.pid)
        assert len(pids) >= 3  # server, worker, mlflow (plus their children)
        worker_log = tmp_path / "logs" / "prefect-worker.log"
        for _ in range(240):  # the worker may still be importing on a busy machine
            if "started" in worker_log.read_text():
                break
            time.sleep(0.5)
        assert "started" in worker_log.read_text()
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=90)[0]
        assert "stopped." in rest
        time.sleep(0.5)
        left = [p for p in pids if alive(p)]
        assert not left, f"left running: {left}"
    finally:  # whatever happened above, nothing this test started survives it
        for p in [proc.pid, *descendants(proc.pid), *pids]:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        proc.wait(timeout=30)


def test_pull_steps_make_the_defaults_runnable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               prefect_harness: None) -> None:
    """On a fresh checkout (here: an empty working directory) the default parameters work:
    the demo data is written, and for `train` the demo store is built first."""
    import flows.defaults
    from flows import deploy_steps
    from storage.mel_store import MelStore

    monkeypatch.chdir(tmp_path)
    assert deploy_steps.set_project_root() == {"directory": str(ROOT)}
    assert Path.cwd() == ROOT
    with pytest.raises(FileNotFoundError, match="not the audio-wgan project root"):
        deploy_steps.set_project_root(str(tmp_path))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(flows.defaults, "DEMO_CLIPS_PER_CLASS", 1)
    # a run whose data_dir is the user's own folder: nothing is generated
    monkeypatch.setattr(deploy_steps, "_run_parameters", lambda: {"data_dir": "/data/mine"})
    assert deploy_steps.ensure_demo_inputs() == {"demo_data": None, "demo_store": None}
    assert not (tmp_path / "work").exists()
    # precompute/demo with its defaults
    monkeypatch.setattr(deploy_steps, "_run_parameters",
                        lambda: {"data_dir": "work/demo-data", "store": "work/mels.zarr"})
    done = deploy_steps.ensure_demo_inputs()
    assert done["demo_data"]["written"] == len(CLASSES) and done["demo_store"] is None
    # train/demo with its defaults: the store is built from the demo data, with DEMO_MEL
    monkeypatch.setattr(deploy_steps, "_run_parameters", lambda: {"store": "work/mels.zarr"})
    done = deploy_steps.ensure_demo_inputs(needs_store=True)
    assert done["demo_store"]["rows"] > 0
    store = MelStore.open(tmp_path / "work" / "mels.zarr")
    assert store.mel_config.n_mels == flows.defaults.DEMO_MEL["n_mels"]
    assert deploy_steps.ensure_demo_inputs(needs_store=True)["demo_store"] is None  # once
