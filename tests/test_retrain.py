"""The retrain flow and its steps: skip on unchanged data, retrain on new clips, promotion
only of better models (real Prefect server, real MLflow registry on SQLite, real Zarr)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from registry_fixtures import make_bundle, register_bundle

from clips.demo import CLASSES, MARKER
from storage import registry
from storage.checkpoints import save_checkpoint
from storage.promotion_rule import CANDIDATE, CHAMPION, decide, lower_is_better_for
from tasks.promote import promote
from tasks.retrain_plan import (
    FINGERPRINT_TAG,
    RetrainError,
    ensure_demo_data,
    mel_for,
    plan_training,
)
from tasks.retrain_steps import prepare_checkpoint_dir

ROOT = Path(__file__).resolve().parents[1]
TINY_MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 32, "frames": 32}


def _aliases(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in registry.client().get_registered_model(name).aliases.items()}


# --- the decision rule (pure) ----------------------------------------------------------------

@pytest.mark.parametrize(("value", "champ", "champ_value", "margin", "lower", "alias", "words"), [
    (5.0, None, None, 0.0, True, CHAMPION, "first model version"),
    (4.0, 1, 5.0, 0.0, True, CHAMPION, "beats champion v1"),
    (6.0, 1, 5.0, 0.0, True, CANDIDATE, "does not beat"),
    (5.0, 1, 5.0, 0.0, True, CANDIDATE, "does not beat"),  # a tie keeps the champion
    (4.5, 1, 5.0, 1.0, True, CANDIDATE, "margin 1"),  # better, but not by the margin
    (0.9, 2, 0.8, 0.0, False, CHAMPION, "higher is better"),
    (float("nan"), 1, 5.0, 0.0, True, CANDIDATE, "could not be scored"),
    (None, 1, 5.0, 0.0, True, CANDIDATE, "could not be scored"),
    (4.0, 1, None, 0.0, True, CHAMPION, "champion v1 could not be scored"),
])
def test_decide(value, champ, champ_value, margin, lower, alias, words) -> None:
    d = decide(value, champ, champ_value, "m", lower_is_better=lower, margin=margin)
    assert d.alias == alias
    assert words in d.reason


def test_metric_directions() -> None:
    assert lower_is_better_for("frechet_distance") and lower_is_better_for("ndb_k")
    assert not lower_is_better_for("gen_accuracy")
    assert not lower_is_better_for("inception_score")


# --- promotion on a real registry (fabricated scores) ----------------------------------------

def test_promotion_moves_champion_only_for_a_better_model(tmp_path: Path, mlflow_uri: str
                                                          ) -> None:
    name = "audio-wgan"
    v1 = register_bundle(make_bundle(tmp_path / "b1", seed=1))
    r1 = promote(name, v1, 10.0, None, None)
    assert r1["decision"] == CHAMPION

    v2 = register_bundle(make_bundle(tmp_path / "b2", seed=2))
    r2 = promote(name, v2, 12.0, v1, 10.0)
    assert r2["decision"] == CANDIDATE
    c = registry.client()
    assert _aliases(name) == {CHAMPION: str(v1), CANDIDATE: str(v2)}
    tags2 = c.get_model_version(name, str(v2)).tags
    assert tags2["promotion_decision"] == CANDIDATE
    assert "does not beat champion v1" in tags2["promotion_reason"]
    assert float(tags2["metric.frechet_distance"]) == 12.0

    v3 = register_bundle(make_bundle(tmp_path / "b3", seed=3))
    r3 = promote(name, v3, 7.5, v1, 10.0)
    assert r3["decision"] == CHAMPION and r3["previous_champion"] == v1
    assert _aliases(name) == {CHAMPION: str(v3), CANDIDATE: str(v2)}
    assert c.get_model_version(name, str(v1)).tags["former_champion"] == f"replaced by v{v3}"
    assert "beats champion v1" in c.get_model_version(name, str(v3)).tags["promotion_reason"]


def test_plan_training_compares_store_fingerprints(tmp_path: Path, mlflow_uri: str) -> None:
    name = "audio-wgan"
    assert plan_training(name, "f" * 64)["train"]  # nothing registered yet
    v1 = register_bundle(make_bundle(tmp_path / "b1"), tags={FINGERPRINT_TAG: "a" * 64})
    registry.set_alias(name, CHAMPION, v1)
    same = plan_training(name, "a" * 64)
    assert not same["train"] and same["version"] == v1 and "unchanged" in same["reason"]
    assert plan_training(name, "a" * 64, force=True)["train"]
    new = plan_training(name, "b" * 64)
    assert new["train"] and "changed since v1" in new["reason"]
    # a version that lost to the champion still marks its data as done
    v2 = register_bundle(make_bundle(tmp_path / "b2"), tags={FINGERPRINT_TAG: "b" * 64})
    registry.set_alias(name, CANDIDATE, v2)
    assert plan_training(name, "b" * 64)["version"] == v2


# --- demo data and checkpoint folders --------------------------------------------------------

def test_ensure_demo_data(tmp_path: Path) -> None:
    default = tmp_path / "work" / "demo-data"
    made = ensure_demo_data(default, 1, default_dir=default)  # missing default: written
    assert made["written"] == len(CLASSES) and (default / MARKER).is_file()
    assert ensure_demo_data(default, 1, default_dir=default)["written"] == 0
    assert mel_for(default, None, TINY_MEL) == TINY_MEL  # demo data -> the demo mel config
    assert mel_for(default, {"n_mels": 16}, TINY_MEL) == {"n_mels": 16}

    other = tmp_path / "mine"
    assert ensure_demo_data(other, 1, default_dir=default)["written"] == 0  # not the default
    assert not other.exists()
    (other / "cat").mkdir(parents=True)
    (other / "cat" / "meow.wav").write_bytes(b"RIFF")
    with pytest.raises(RetrainError, match="not a demo data set"):
        ensure_demo_data(other, 1, demo=True)
    assert mel_for(other, None, TINY_MEL) is None
    grown = ensure_demo_data(default, 2, demo=True)  # more clips per class: only the new ones
    assert grown["written"] == len(CLASSES)


def test_prepare_checkpoint_dir(tmp_path: Path) -> None:
    fp = "c0ffee" * 10
    fresh = prepare_checkpoint_dir(tmp_path, fp, epochs=5)
    assert fresh["start"] == "fresh" and fresh["target_epochs"] == 5 and not fresh["resumed"]
    d = Path(fresh["checkpoint_dir"])
    save_checkpoint(d, {"w": torch.zeros(2)}, epoch=2, meta={"fingerprint": fp})
    again = prepare_checkpoint_dir(tmp_path, fp, epochs=9)  # crashed run: same folder, target
    assert again["resumed"] and again["checkpoint_dir"] == str(d) and again["target_epochs"] == 5
    forced = prepare_checkpoint_dir(tmp_path, fp, epochs=5, force=True, stamp="20250101T000000")
    assert forced["checkpoint_dir"] != str(d) and not forced["resumed"]

    champ_dir = tmp_path / "champ"
    ck = save_checkpoint(champ_dir, {"w": torch.ones(2)}, epoch=7, meta={"fingerprint": "x"})
    champion = {"version": 1, "checkpoint": str(ck)}
    warm = prepare_checkpoint_dir(tmp_path, "d" * 64, epochs=3, warm_start=True,
                                  champion=champion)
    assert warm["start"] == "warm-start" and warm["target_epochs"] == 10
    assert (Path(warm["checkpoint_dir"]) / ck.name).is_file()
    assert (Path(warm["checkpoint_dir"]) / f"{ck.name}.sha256").is_file()
    cold = prepare_checkpoint_dir(tmp_path, "e" * 64, epochs=3, warm_start=True,
                                  champion={"version": 1, "checkpoint": None})
    assert cold["start"] == "fresh" and "no checkpoint on disk" in cold["note"]


# --- the flow end to end ---------------------------------------------------------------------

@pytest.mark.integration
def test_retrain_flow_end_to_end(tmp_path: Path, mlflow_uri: str, prefect_harness: None
                                 ) -> None:
    from flows.retrain import retrain

    data = tmp_path / "demo"
    params = {"data_dir": str(data), "store": str(tmp_path / "mels.zarr"), "preset": "tiny",
              "epochs": 1, "mel": TINY_MEL, "demo": True, "demo_clips_per_class": 3,
              "checkpoint_dir": str(tmp_path / "ckpt"), "samples_dir": str(tmp_path / "s"),
              "batch_size": 16, "eval_per_class": 4, "render_per_class": 1, "device": "cpu"}
    c = registry.client()

    first = retrain(**params)
    assert not first["skipped"] and first["version"] == 1 and first["decision"] == CHAMPION
    assert first["rows"] >= 2 * 3 * len(CLASSES) and first["rows"] % (3 * len(CLASSES)) == 0
    assert math.isfinite(first["value"])
    mv = c.get_model_version("audio-wgan", "1")
    assert mv.tags[FINGERPRINT_TAG] == first["fingerprint"]
    assert Path(mv.tags["checkpoint"]).is_file()
    run = c.get_run(first["run_id"])
    assert run.data.metrics["eval_frechet_distance"] == pytest.approx(first["value"])
    assert Path(first["gallery"]).is_file()
    assert any(a.path == "samples" for a in c.list_artifacts(first["run_id"]))

    t0 = time.monotonic()
    second, imported = retrain_in_fresh_process(params, tmp_path)  # same clips: nothing
    assert second["skipped"] and "store unchanged: v1" in second["reason"]
    assert len(c.search_model_versions("name='audio-wgan'")) == 1
    assert not imported & {"torch", "mlflow", "matplotlib"}, imported  # the skip is light
    print(f"skip took {time.monotonic() - t0:.1f} s")

    third = retrain(**{**params, "demo_clips_per_class": 4, "warm_start": True})
    assert not third["skipped"] and third["version"] == 2
    assert third["start"]["mode"] == "warm-start" and "champion v1" in third["start"]["note"]
    assert third["epoch"] == 2  # champion's epoch 1 + 1 more
    assert third["champion_value"] is not None
    better = third["value"] < third["champion_value"]
    assert _aliases("audio-wgan")[CHAMPION] == ("2" if better else "1")
    assert third["decision"] == (CHAMPION if better else CANDIDATE)
    reason = c.get_model_version("audio-wgan", "2").tags["promotion_reason"]
    assert reason == third["promotion"]["reason"]


def retrain_in_fresh_process(params: dict, cwd: Path) -> tuple[dict, set[str]]:
    """The retrain flow run by a new interpreter (on this session's Prefect server): its
    result, and which heavy libraries it imported on the way."""
    from prefect.settings import PREFECT_API_URL

    probe = ("import json, sys\n"
             "from flows.retrain import retrain\n"
             "r = retrain(**json.loads(sys.argv[1]))\n"
             "heavy = ('torch', 'mlflow', 'matplotlib', 'prefect')\n"
             "print('RESULT', json.dumps({'result': r, 'imported': "
             "[m for m in heavy if m in sys.modules]}, default=str))\n")
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(params)], cwd=cwd,
                         text=True, capture_output=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT),
                              "PREFECT_API_URL": str(PREFECT_API_URL.value())})
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert out.returncode == 0 and line, out.stdout[-2000:] + out.stderr[-2000:]
    got = json.loads(line[-1].removeprefix("RESULT "))
    return got["result"], set(got["imported"])


@pytest.mark.integration
def test_retrain_rejects_bad_parameters_before_any_work(tmp_path: Path, mlflow_uri: str,
                                                        prefect_harness: None) -> None:
    from flows.retrain import retrain

    with pytest.raises(RetrainError, match="epochs must be at least 1"):
        retrain(data_dir=str(tmp_path / "d"), store=str(tmp_path / "s.zarr"), epochs=0)
    assert not (tmp_path / "d").exists() and not (tmp_path / "s.zarr").exists()


@pytest.mark.integration
def test_retrain_that_died_after_training_registers_without_retraining(
        tmp_path: Path, mlflow_uri: str, prefect_harness: None) -> None:
    """Training finished but nothing got registered (say the process died while
    evaluating): the next run resumes the finished checkpoint, trains no epoch, renders and
    registers it."""
    from flows.retrain import retrain

    params = {"data_dir": str(tmp_path / "demo"), "store": str(tmp_path / "mels.zarr"),
              "preset": "tiny", "epochs": 1, "mel": TINY_MEL, "demo": True,
              "demo_clips_per_class": 3, "checkpoint_dir": str(tmp_path / "ckpt"),
              "samples_dir": str(tmp_path / "s"), "batch_size": 16, "eval_per_class": 4,
              "render_per_class": 1, "device": "cpu"}
    first = retrain(**params)
    registry.client().delete_model_version("audio-wgan", str(first["version"]))  # "lost"

    again = retrain(**params)
    assert not again["skipped"] and "no version" in again["reason"]
    assert again["start"]["mode"] == "resume" and again["epochs_trained"] == 0
    assert again["checkpoint_dir"] == first["checkpoint_dir"]
    assert again["decision"] == CHAMPION and again["value"] == pytest.approx(first["value"])
    assert Path(again["gallery"]).is_file()
