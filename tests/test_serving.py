"""The champion is served by MLflow's own scoring server (`mlflow models serve`).

This is the deployment path the README promises: register a bundle, alias it `champion`,
serve `models:/audio-wgan@champion` with `--env-manager local`, and POST requests.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect_services import free_port, stop, wait_http_ok
from registry_fixtures import TINY_MEL, make_bundle, register_bundle

from storage import registry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MODEL = "audio-wgan"


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture
def served_champion(tmp_path: Path, mlflow_uri: str) -> Iterator[str]:
    """A registered tiny bundle aliased champion, served on a free loopback port."""
    version = register_bundle(make_bundle(tmp_path / "bundle"))
    registry.set_alias(MODEL, registry.CHAMPION, version)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=mlflow_uri, MLFLOW_REGISTRY_URI=mlflow_uri,
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
               OMP_NUM_THREADS="1")
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")  # closed in the finally below
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/ping", proc, log_path, 120, "mlflow models serve")
        yield url
    finally:
        stop(proc, grace=15)
        log.close()


def test_champion_is_served_by_mlflow_scoring_server(served_champion: str) -> None:
    url = f"{served_champion}/invocations"
    request = {"dataframe_records": [{"class": "beep", "count": 2, "seed": 7}]}

    status, body = _post(url, request)
    assert status == 200, body
    rows = body["predictions"]
    assert len(rows) == 2
    for i, row in enumerate(rows):
        assert row["class"] == "beep" and row["index"] == i and row["seed"] == 7
        assert row["sample_rate"] == TINY_MEL.sample_rate == 8000
        audio = row["audio"]
        assert isinstance(audio, list) and len(audio) == TINY_MEL.segment_samples == 1984
        assert all(math.isfinite(x) for x in audio)
        assert max(abs(x) for x in audio) <= 1.0 + 1e-6
    assert rows[0]["audio"] != rows[1]["audio"]  # two clips, not one copied

    status2, body2 = _post(url, request)
    assert status2 == 200
    assert [r["audio"] for r in body2["predictions"]] == [r["audio"] for r in rows]

    status, err = _post(url, {"dataframe_records": [{"class": "meow", "count": 1}]})
    assert 400 <= status < 500, (status, err)
    # a bad request is a 400 whose message ends with the model's one-line reason
    assert status == 400 and err.get("error_code") == "INVALID_PARAMETER_VALUE", err
    reason = err.get("message", "").strip().splitlines()[-1]
    assert reason.startswith("Error: unknown class 'meow'; the model knows"), err
