"""The champion is served by MLflow's own scoring server (`mlflow models serve`).

This is the deployment path the README promises: register a bundle, alias it `champion`,
serve `models:/audio-wgan@champion` with `--env-manager local`, and POST requests.
"""

from __future__ import annotations

import json
import math
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect_services import free_port, http_server
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
    with http_server([str(VENV_BIN / "mlflow"), "models", "serve", "-m",
                      f"models:/{MODEL}@champion", "--env-manager", "local", "-h", "127.0.0.1",
                      "-p", str(port), "-w", "1"], port, env, tmp_path,
                     "mlflow models serve") as url:
        yield url


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

    # the CLI's ranges, strict types and a budget for the request as a whole (issue 14)
    for body, why in (
        ({"class": "beep", "seed": -1}, "row 0: seed: Input should be greater than or equal"),
        ({"class": "beep", "count": 513}, "row 0: count: Input should be less than or equal"),
        ([{"class": "beep", "count": 512}] * 4, "the request asks for 2048 clips; at most 512"),
        ({"class": "beep", "count": 1.5}, "row 0: count: Input should be a valid integer"),
    ):
        records = body if isinstance(body, list) else [body]
        status, err = _post(url, {"dataframe_records": records})
        assert status == 400 and err.get("error_code") == "INVALID_PARAMETER_VALUE", err
        assert err["message"].strip().splitlines()[-1].startswith(f"Error: {why}"), err


# --- the request layer without a server (fast; the same code the server runs) -------------

@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    from mlflow.pyfunc import PythonModelContext

    from storage.pyfunc_generator import AudioWGANModel

    m = AudioWGANModel()
    m.load_context(PythonModelContext(
        {"bundle": str(make_bundle(tmp_path_factory.mktemp("b") / "bundle"))}, {}))
    return m


@pytest.mark.parametrize("request_rows, reason", [
    ([{"class": "beep", "count": 1.5}], "row 0: count: Input should be a valid integer"),
    ([{"class": "beep", "count": True}], "row 0: count: Input should be a valid integer"),
    ([{"class": "beep", "count": "2"}], "row 0: count: Input should be a valid integer"),
    ([{"class": "beep", "seed": -1}], "row 0: seed: Input should be greater than or equal"),
    ([{"class": "beep", "seed": 2**63}], "row 0: seed: Input should be less than or equal"),
    ([{"class": "beep", "count": 0}], "row 0: count: Input should be greater than or equal"),
    ([{"class": "beep", "cout": 2}], "row 0: cout: Extra inputs are not permitted"),
    ([{"count": 2}], "row 0: class: Field required"),
    ([{"class": ""}], "row 0: class: String should have at least 1 character"),
    ([{"class": "beep", "return_mel": 1}], "row 0: return_mel: Input should be a valid bool"),
    ([{"class": "beep"}, {"class": "meow"}], "unknown class 'meow'"),
    ([{"class": "beep", "count": 300}, {"class": "hum", "count": 300}],
     "the request asks for 600 clips; at most 512 per request"),
    ([], "the request has no rows"),
    ("beep", "expected a DataFrame or records"),
])
def test_bad_requests_refused_before_any_clip(model, request_rows, reason: str) -> None:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as err:
        model.predict(None, request_rows)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert str(err.value.message).startswith(reason), err.value.message
    assert "\n" not in str(err.value.message)


def test_sample_budget_counts_returned_mels(model) -> None:
    from storage.pyfunc_generator import MAX_REQUEST_SAMPLES, parse_request

    mel = model.bundle.mel
    per_clip = mel.segment_samples + mel.n_mels * mel.frames
    with pytest.raises(ValueError, match="samples; at most"):
        parse_request([{"class": "beep", "count": 512, "return_mel": True}],
                      MAX_REQUEST_SAMPLES // 512, 1)
    # 512 clips of their audio alone fit; 2 x 300 clips do not, whatever their size
    assert len(parse_request([{"class": "beep", "count": 512}], mel.segment_samples,
                             per_clip)) == 1
    with pytest.raises(ValueError, match="600 clips"):
        parse_request([{"class": "beep", "count": 300}] * 2, 1, 1)


def test_dataframe_gaps_and_numpy_types_are_taken(model) -> None:
    """What the scoring server passes: a DataFrame whose gaps made a column float."""
    import pandas as pd

    df = pd.DataFrame([{"class": "beep", "count": 2, "seed": 7}, {"class": "hum"}])
    out = model.predict(None, df)
    assert list(out["class"]) == ["beep", "beep", "hum"]
    assert list(out["seed"]) == [7, 7, 0] and list(out["index"]) == [0, 1, 0]


def test_per_second_budget_refuses_then_refills(model) -> None:
    """A token bucket per serving process; stepped by a fake clock, never by sleeping."""
    from mlflow.exceptions import MlflowException

    from storage.pyfunc_generator import SampleBudget

    now = [100.0]
    per_clip = model.bundle.mel.segment_samples
    saved = model.budget
    model.budget = SampleBudget(rate=2 * per_clip, burst=2 * per_clip, clock=lambda: now[0])
    try:
        assert len(model.predict(None, [{"class": "beep", "count": 2}])) == 2
        with pytest.raises(MlflowException) as err:
            model.predict(None, [{"class": "beep", "count": 1}])
        assert err.value.error_code == "RESOURCE_EXHAUSTED"
        assert err.value.get_http_status_code() == 429
        assert "retry in 0.5 s" in err.value.message
        now[0] += 0.5  # half a second refills one clip's samples
        assert len(model.predict(None, [{"class": "beep", "count": 1}])) == 1
    finally:
        model.budget = saved


def test_per_second_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from storage.pyfunc_generator import MAX_REQUEST_SAMPLES, SAMPLES_PER_S_ENV, SampleBudget

    monkeypatch.setenv(SAMPLES_PER_S_ENV, "1000")
    b = SampleBudget.from_env()
    assert b.rate == 1000 and b.burst == MAX_REQUEST_SAMPLES  # one full request still fits
    from gan.limits import SettingError

    for bad in ("-3", "abc", "nan"):  # a typo is an error naming the variable, not the default
        monkeypatch.setenv(SAMPLES_PER_S_ENV, bad)
        with pytest.raises(SettingError, match=f"^{SAMPLES_PER_S_ENV}="):
            SampleBudget.from_env()
    monkeypatch.delenv(SAMPLES_PER_S_ENV)
    assert SampleBudget.from_env().rate == MAX_REQUEST_SAMPLES
