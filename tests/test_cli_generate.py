"""`audio-wgan generate` and `audio-wgan models` against a real registered model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from registry_fixtures import (
    CLASSES,
    TINY_MEL,
    fresh_mlflow,
    make_bundle,
    one_torch_thread,
    register_bundle,
)

from audio_wgan.cli import main
from storage import registry


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """conftest's fixture, from a pre-migrated database (saves ~10 s per test)."""
    return fresh_mlflow(tmp_path, monkeypatch)


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture
def registered(tmp_path, mlflow_uri) -> str:
    version = register_bundle(make_bundle(tmp_path / "bundle"))
    registry.promote("audio-wgan", version)
    return "models:/audio-wgan@champion"


def test_generate_writes_deterministic_wavs(tmp_path, registered, capsys):
    out1, out2, out3 = tmp_path / "g1", tmp_path / "g2", tmp_path / "g3"
    assert main(["generate", "--model", registered, "--class", "beep", "-n", "3",
                 "--seed", "5", "--out", str(out1)]) == 0
    files = sorted(p.name for p in out1.iterdir())
    assert files == ["beep_0.wav", "beep_1.wav", "beep_2.wav"]
    for name in files:
        audio, sr = sf.read(out1 / name, dtype="float32")
        info = sf.info(out1 / name)
        assert sr == TINY_MEL.sample_rate and info.channels == 1
        assert audio.shape == (TINY_MEL.segment_samples,)
        assert np.isfinite(audio).all() and 0 < np.abs(audio).max() <= 0.951
    # same seed -> same files; another seed -> different audio
    assert main(["generate", "--model", "models:/audio-wgan/1", "--class", "beep", "-n", "3",
                 "--seed", "5", "--out", str(out2)]) == 0
    assert main(["generate", "--model", registered, "--class", "beep", "-n", "1",
                 "--seed", "6", "--out", str(out3)]) == 0
    for name in files:
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes()
    assert (out3 / "beep_0.wav").read_bytes() != (out1 / "beep_0.wav").read_bytes()
    assert "3 clip(s) of 'beep'" in capsys.readouterr().out


def test_generate_bad_input_is_one_line(tmp_path, registered, capsys):
    out = tmp_path / "never"
    assert main(["generate", "--model", registered, "--class", "cat", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown class 'cat'" in err and all(c in err for c in CLASSES)
    assert not out.exists()
    assert main(["generate", "--model", "models:/missing@champion", "--class", "beep",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err
    assert main(["generate", "--model", registered, "--class", "beep", "-n", "0",
                 "--out", str(out)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_models_lists_versions(tmp_path, registered, capsys):
    second = register_bundle(make_bundle(tmp_path / "b2", seed=1))
    registry.promote("audio-wgan", second)
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows] == [2, 1]
    assert rows[0]["aliases"] == ["candidate"] and rows[1]["aliases"] == ["champion"]
    assert rows[0]["tags"]["preset"] == "tiny"
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "v2" in text and "candidate" in text and "champion" in text
    assert main(["models", "--name", "nope"]) == 2
    assert "no registered model named 'nope'" in capsys.readouterr().err


def test_models_with_an_unusable_tracking_uri_is_one_line(tmp_path, monkeypatch, capsys):
    from hostile_checks import refused

    uri = (tmp_path / "mlruns").as_uri()  # MLflow's file store refuses to be used
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    line = refused(capsys, ["models"], tmp_path)
    assert line.startswith(f"audio-wgan models: error: cannot read the registry at {uri}: ")


def test_promote_by_hand_records_why_and_models_shows_it(tmp_path, mlflow_uri, capsys):
    v1 = register_bundle(make_bundle(tmp_path / "b1"))
    v2 = register_bundle(make_bundle(tmp_path / "b2", seed=1))
    registry.promote("audio-wgan", v1)
    assert main(["promote", "audio-wgan", str(v2), "--reason", "sounds better  to me"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"audio-wgan v{v2} -> @champion (set by hand: sounds better to me)")
    mv = registry.version_by_alias("audio-wgan", "champion")
    assert str(mv.version) == str(v2)
    assert mv.tags["promotion_reason"] == "set by hand: sounds better to me"
    assert mv.tags["promotion_decision"] == "champion (by hand)"
    assert main(["models"]) == 0
    assert "promotion_reason=set by hand: sounds better to me" in capsys.readouterr().out
    for argv, why in ((["promote", "audio-wgan", "99", "--reason", "x"],
                       "cannot promote audio-wgan version 99"),
                      (["promote", "audio-wgan", str(v1), "--reason", " "],
                       "--reason must say why"),
                      (["promote", "audio-wgan", str(v1), "--reason", "x", "--alias", "a b"],
                       "--alias 'a b'")):
        assert main(argv) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("audio-wgan promote: error:") and why in line, line
    assert str(registry.version_by_alias("audio-wgan", "champion").version) == str(v2)
