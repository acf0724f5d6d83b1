"""Training against a real `mlflow server` (HTTP tracking, registry and proxied artifacts)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from prefect_services import free_port, stop, wait_http_ok
from registry_fixtures import TINY_MEL, _migrated_template, one_torch_thread, write_tone_dataset

from flows.precompute import precompute
from flows.train import train
from storage import registry

pytestmark = pytest.mark.integration

MLFLOW = str(Path(sys.executable).parent / "mlflow")
MEL = {k: getattr(TINY_MEL, k) for k in ("sample_rate", "n_fft", "hop_length", "n_mels",
                                         "frames")}


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture
def mlflow_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`mlflow server` on a free loopback port; always stopped, also when the test fails."""
    db = tmp_path / "server.db"
    shutil.copy(_migrated_template(), db)  # skip ~10 s of migrations at server start
    art = tmp_path / "server-artifacts"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = open(tmp_path / "server.log", "wb")  # closed in the finally below
    proc = subprocess.Popen(
        [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(art)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{uri}/health", proc, tmp_path / "server.log", 180, "mlflow server")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        monkeypatch.delenv("AUDIO_WGAN_ARTIFACT_ROOT", raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield uri
    finally:
        stop(proc, grace=15)
        log.close()


def test_train_registers_on_a_tracking_server(tmp_path, prefect_harness, mlflow_server):
    data = write_tone_dataset(tmp_path / "data", clips=2)
    store = tmp_path / "mels.zarr"
    precompute(str(data), str(store), mel=MEL)

    result = train(store=str(store), preset="tiny", epochs=1, batch_size=8,
                   checkpoint_dir=str(tmp_path / "ck"))
    assert result["model_version"] == 1 and result["alias"] == "champion"

    assert registry.tracking_uri() == mlflow_server
    exp = registry.client().get_experiment_by_name("audio-wgan")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # the server's choice
    rows = registry.list_versions("audio-wgan")
    assert rows[0]["version"] == 1 and rows[0]["aliases"] == ["champion"]
    assert rows[0]["run_id"] == result["run_id"] and rows[0]["tags"]["preset"] == "tiny"
    assert rows[0]["metrics"]["critic_loss"] == pytest.approx(result["final"]["critic_loss"])
    # the weights went through the server into its artifact store
    stored = list((tmp_path / "server-artifacts").rglob("generator.pt"))
    assert stored, "no generator.pt under the server's --artifacts-destination"

    bundle = registry.load_bundle("models:/audio-wgan@champion")
    assert sorted(bundle.class_names) == ["high", "low", "mid"]
    assert bundle.mel == TINY_MEL
    model = mlflow.pyfunc.load_model("models:/audio-wgan/1")
    out = model.predict(pd.DataFrame([{"class": bundle.class_names[0], "count": 1,
                                       "seed": 1}]))
    audio = np.asarray(out["audio"][0])
    assert audio.shape == (TINY_MEL.segment_samples,) and np.isfinite(audio).all()
