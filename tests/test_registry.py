"""storage.registry and the pyfunc model against a real SQLite-backed MLflow."""

from __future__ import annotations

import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from registry_fixtures import (
    CLASSES,
    TINY_MEL,
    fresh_mlflow,
    make_bundle,
    one_torch_thread,
    register_bundle,
)

from storage import registry
from storage.model_bundle import synthesise
from tasks import tracking


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """conftest's fixture, from a pre-migrated database (saves ~10 s per test)."""
    return fresh_mlflow(tmp_path, monkeypatch)


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


def test_tracking_uri_defaults_to_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv("AUDIO_WGAN_ARTIFACT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert registry.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert registry.registry_uri() == registry.tracking_uri()
    assert registry.artifact_root() == (tmp_path / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert registry.tracking_uri() == "http://127.0.0.1:5999"
    assert registry.artifact_root() is None  # a server decides where artifacts go


def test_log_register_load_and_predict(tmp_path, mlflow_uri):
    bundle_dir = make_bundle(tmp_path / "bundle")
    version = register_bundle(bundle_dir, tags={"preset": "tiny", "store_fingerprint": "abc"})
    assert version == 1
    decision = registry.promote("audio-wgan", version)
    assert decision["decision"] == "champion"

    rows = registry.list_versions("audio-wgan")
    assert [r["version"] for r in rows] == [1]
    assert rows[0]["aliases"] == ["champion"]
    assert rows[0]["tags"]["store_fingerprint"] == "abc"
    assert rows[0]["tags"]["promotion_reason"].startswith("first model version")
    assert rows[0]["run_id"]

    # the artifact lives under the configured artifact root
    art_root = Path(mlflow.get_experiment_by_name("audio-wgan").artifact_location[7:])
    assert art_root == tmp_path / "mlartifacts"

    # load_bundle through every URI form gives the same weights
    mv = registry.client().get_model_version("audio-wgan", "1")
    ref = torch.load(bundle_dir / "generator.pt", weights_only=True)
    for uri in ("models:/audio-wgan@champion", "models:/audio-wgan/1",
                f"runs:/{mv.run_id}/model", str(bundle_dir)):
        b = registry.load_bundle(uri)
        assert b.class_names == CLASSES and b.mel == TINY_MEL and b.preset == "tiny"
        for k, v in b.generator.state_dict().items():
            assert torch.equal(v, ref[k]), (uri, k)

    # the pyfunc: DataFrame in (as the scoring server passes it), one row per clip out
    model = mlflow.pyfunc.load_model("models:/audio-wgan@champion")
    out = model.predict(pd.DataFrame([{"class": "beep", "count": 2, "seed": 7}]))
    assert list(out["class"]) == ["beep", "beep"] and list(out["index"]) == [0, 1]
    assert set(out["sample_rate"]) == {TINY_MEL.sample_rate} and "mel_db" not in out
    audio = np.asarray(out["audio"][0], dtype=np.float32)
    assert audio.shape == (TINY_MEL.segment_samples,)
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 0.95 + 1e-6
    # deterministic for a seed, and the same clip `generate` would write
    again = model.predict([{"class": "beep", "count": 2, "seed": 7}])
    np.testing.assert_array_equal(np.asarray(again["audio"][1]), np.asarray(out["audio"][1]))
    waves, _ = synthesise(registry.load_bundle("models:/audio-wgan/1"), "beep", 2, 7)
    np.testing.assert_allclose(waves[1].numpy(), np.asarray(out["audio"][1]), atol=1e-6)
    other = model.predict(pd.DataFrame([{"class": "beep", "count": 1, "seed": 8}]))
    assert not np.array_equal(np.asarray(other["audio"][0]), np.asarray(out["audio"][0]))
    with_mel = model.predict(pd.DataFrame([{"class": "hum", "count": 1, "seed": 0,
                                            "return_mel": True}]))
    assert np.asarray(with_mel["mel_db"][0]).shape == (TINY_MEL.n_mels, TINY_MEL.frames)
    with pytest.raises(Exception, match="unknown class"):
        model.predict(pd.DataFrame([{"class": "cat", "count": 1, "seed": 0}]))


def test_logged_model_contains_no_pickled_object(tmp_path, mlflow_uri):
    version = register_bundle(make_bundle(tmp_path / "bundle"))
    local = Path(mlflow.artifacts.download_artifacts(f"models:/audio-wgan/{version}",
                                                     dst_path=str(tmp_path / "dl")))
    files = [p for p in local.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert "pyfunc_generator.py" in names and "generator.pt" in names
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    mlmodel = mlflow.models.Model.load(str(local / "MLmodel"))
    conf = mlmodel.flavors["python_function"]
    assert conf["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # models from code
    assert "python_model" not in conf
    assert mlmodel.signature is not None
    assert [c.name for c in mlmodel.signature.inputs.inputs][:1] == ["class"]
    # the weights are a plain state_dict: the torch zip's pickle names no class of ours,
    # and it loads under weights_only=True
    weights = next(p for p in files if p.name == "generator.pt")
    with zipfile.ZipFile(weights) as zf:
        pkl = b"".join(zf.read(n) for n in zf.namelist() if n.endswith(".pkl"))
    assert b"gan.models" not in pkl and b"AudioWGANModel" not in pkl
    assert isinstance(torch.load(weights, weights_only=True), dict)


def test_promotion_rules(mlflow_uri):
    c = registry.client()
    c.create_registered_model("m")
    versions = [c.create_model_version("m", source=f"file:///nowhere/{i}").version
                for i in range(4)]
    first = registry.promote("m", versions[0], "fd", 2.0)
    assert first["decision"] == "champion"
    # no metric: later versions are candidates, the champion stays
    r = registry.promote("m", versions[1])
    assert r["decision"] == "candidate" and "no evaluation metric" in r["reason"]
    # better, but not by the margin -> candidate
    r = registry.promote("m", versions[2], "fd", 1.95, margin=0.1)
    assert r["decision"] == "candidate" and "does not beat" in r["reason"]
    assert str(registry.version_by_alias("m", "champion").version) == str(versions[0])
    assert str(registry.version_by_alias("m", "candidate").version) == str(versions[2])
    # better by more than the margin -> champion; the old one keeps a tag
    r = registry.promote("m", versions[3], "fd", 1.5, margin=0.1)
    assert r["decision"] == "champion" and r["previous_champion"] == int(versions[0])
    assert str(registry.version_by_alias("m", "champion").version) == str(versions[3])
    old = c.get_model_version("m", versions[0])
    assert old.tags["former_champion"] == f"replaced by v{versions[3]}"
    new = c.get_model_version("m", versions[3])
    assert new.tags["promotion_reason"] == r["reason"]
    assert new.tags["metric.fd"] == "1.5"
    # higher-is-better with an explicit champion value
    r = registry.promote("m", versions[1], "acc", 0.9, lower_is_better=False,
                         champion_value=0.5)
    assert r["decision"] == "champion" and "higher is better" in r["reason"]
    again = registry.promote("m", versions[1])
    assert again["decision"] == "champion" and "already the champion" in again["reason"]
    rows = {row["version"]: row for row in registry.list_versions("m")}
    assert rows[int(versions[1])]["aliases"] == ["champion"]
    assert rows[int(versions[2])]["aliases"] == ["candidate"]


def test_unknown_model_and_uri_are_one_line_errors(tmp_path, mlflow_uri):
    with pytest.raises(registry.RegistryError, match="no registered model named 'nope'"):
        registry.list_versions("nope")
    with pytest.raises(registry.RegistryError) as exc:
        registry.load_bundle("models:/nope@champion")
    assert "\n" not in str(exc.value)
    with pytest.raises(registry.RegistryError, match="neither a generator bundle"):
        registry.load_bundle(str(tmp_path))


def test_tracking_logs_params_tags_and_batched_metrics(mlflow_uri):
    run_id = tracking.start_run("exp-t", {"lr": 1e-4, "mel": {"n_mels": 32}}, {"k": "v"})
    with tracking.MetricBatcher(run_id, flush_every=7) as mb:
        for step in range(1, 11):
            mb.log({"critic_loss": -step, "generator_loss": step / 2, "step": step}, step=step)
    tracking.end_run(run_id)
    c = registry.client()
    run = c.get_run(run_id)
    assert run.data.params["lr"] == "0.0001" and run.data.params["mel.n_mels"] == "32"
    assert run.data.tags["k"] == "v" and run.data.tags["git_commit"]
    assert run.info.status == "FINISHED"
    hist = c.get_metric_history(run_id, "critic_loss")
    assert sorted(m.step for m in hist) == list(range(1, 11))
    assert "step" not in run.data.metrics


def test_train_and_retrain_flows_promote_by_the_one_rule(tmp_path, mlflow_uri):
    """Both outcomes through both callers, with scores this test chose: the train flow's
    registration (tasks.train.register_model: no evaluation) and the retrain flow's task
    (tasks.promote.promote: both models scored on the same store) end in
    storage.registry.promote, which applies storage.promotion_rule.decide."""
    import tasks.promote
    from storage import promotion_rule
    from tasks import train

    assert not hasattr(tasks.promote, "decide") and not hasattr(tasks.promote, "apply_decision")
    assert registry.decide is promotion_rule.decide
    run_id = tracking.start_run("audio-wgan", {"preset": "tiny"}, {})
    first = train.register_model(str(make_bundle(tmp_path / "b1")), run_id, "m", {})
    tracking.end_run(run_id)
    assert first["decision"] == "champion" and first["version"] == 1
    c = registry.client()
    v2, v3, v4 = (c.create_model_version("m", source=f"file:///nowhere/{i}").version
                  for i in range(3))
    # the train flow has no evaluation: a later version is a candidate, the champion stays
    r = registry.promote("m", v2)
    assert r["decision"] == "candidate" and "no evaluation metric" in r["reason"]
    # retrain: better (lower Fréchet distance, beyond the margin) -> champion
    r = tasks.promote.promote("m", int(v3), 4.0, 1, 5.0, "frechet_distance", margin=0.5)
    assert r["decision"] == "champion" and r["previous_champion"] == 1
    assert "frechet_distance=4 beats champion v1 (5)" in r["reason"]
    assert c.get_model_version("m", "1").tags["metric.frechet_distance"] == "5.0"
    assert c.get_model_version("m", "1").tags["former_champion"] == f"replaced by v{v3}"
    # retrain: worse -> candidate, the champion stays
    r = tasks.promote.promote("m", int(v4), 4.2, int(v3), 4.0, "frechet_distance")
    assert r["decision"] == "candidate" and "does not beat champion v3 (4)" in r["reason"]
    aliases = {k: str(v) for k, v in c.get_registered_model("m").aliases.items()}
    assert aliases == {"champion": str(v3), "candidate": str(v4)}
    tags = c.get_model_version("m", str(v4)).tags
    assert tags["promotion_decision"] == "candidate" and tags["metric.frechet_distance"] == "4.2"
    # a champion that could not be scored on this store gives way to one that could
    r = tasks.promote.promote("m", int(v4), 3.9, int(v3), None, "frechet_distance",
                              champion_note="mel config differs")
    assert r["decision"] == "champion" and "mel config differs" in r["reason"]
