"""The `train` flow and CLI end to end on a tiny store: real Prefect, real MLflow (SQLite)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from prefect.artifacts import Artifact
from registry_fixtures import TINY_MEL, fresh_mlflow, one_torch_thread, write_tone_dataset

import gan.trainer
from audio_wgan.cli import main
from flows.precompute import precompute
from flows.train import train
from gan.errors import TrainingError
from storage import registry
from storage.checkpoints import list_checkpoints
from storage.mel_store import MelStore

pytestmark = pytest.mark.integration

MEL = {k: getattr(TINY_MEL, k) for k in ("sample_rate", "n_fft", "hop_length", "n_mels",
                                         "frames")}
# 3 classes x 4 clips x 1 s at 8 kHz, split into 0.25 s examples: 48 rows; training takes the
# 24 rows of the files evaluation does not hold out (one batch of 16 per epoch)
FAST = {"preset": "tiny", "batch_size": 16, "checkpoint_every": 1}


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """conftest's fixture, from a pre-migrated database (saves ~10 s per test)."""
    return fresh_mlflow(tmp_path, monkeypatch)


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def data_and_store(tmp_path_factory, prefect_harness) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train-data")
    data = write_tone_dataset(root / "data")
    store = root / "mels.zarr"
    precompute(str(data), str(store), mel=MEL)
    assert len(MelStore.open(store)) == 48
    return data, store


def test_cli_trains_registers_and_generates(tmp_path, data_and_store, mlflow_uri, capsys):
    _, store = data_and_store
    ck = tmp_path / "ck"
    rc = main(["train", "--store", str(store), "--preset", "tiny", "--epochs", "2",
               "--batch-size", "16", "--checkpoint-dir", str(ck), "--checkpoint-every", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "epoch 1/2 [" in out and "epoch 2/2 [" in out and "samples/s" in out
    assert "registered audio-wgan version 1 as champion" in out
    assert f"gallery {ck.parent / 'samples' / 'index.html'}" in out  # where to look
    assert [p.name for p in list_checkpoints(ck)] == ["epoch_00001.pt", "epoch_00002.pt"]
    assert (ck / "wgan_audio.pth.tar").resolve().name == "epoch_00002.pt"

    # MLflow: a finished run with params, Prefect/git tags and finite per-step losses
    versions = registry.list_versions("audio-wgan")
    assert [(v["version"], v["aliases"]) for v in versions] == [(1, ["champion"])]
    tags = versions[0]["tags"]
    fingerprint = MelStore.open(store).fingerprint
    assert tags["store_fingerprint"] == fingerprint and tags["preset"] == "tiny"
    assert tags["epochs"] == "2" and tags["run_id"] == versions[0]["run_id"]
    c = registry.client()
    run = c.get_run(versions[0]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["preset"] == "tiny" and run.data.params["batch_size"] == "16"
    assert run.data.params["mel.n_mels"] == "32"
    assert run.data.tags["prefect.flow_run_id"] and run.data.tags["git_commit"]
    assert run.data.tags["store_fingerprint"] == fingerprint
    for key in ("critic_loss", "generator_loss", "gradient_penalty", "wasserstein"):
        hist = c.get_metric_history(run.info.run_id, key)
        assert len(hist) == 2 and all(math.isfinite(m.value) for m in hist)  # 1 step/epoch
    assert [m.step for m in c.get_metric_history(run.info.run_id, "epoch_critic_loss")] == [1, 2]

    # Prefect artifacts: progress reached 100 %, a markdown note per checkpoint
    progress, note = Artifact.get("train-progress"), Artifact.get("train-checkpoint")
    assert progress.type == "progress" and float(progress.data) == pytest.approx(100.0)
    assert note.type == "markdown" and "epoch_00002.pt" in note.data
    # ... and the MLflow run lists its checkpoints (path + SHA-256) beside the samples
    listed = {a.path for a in c.list_artifacts(run.info.run_id, "checkpoints")}
    assert listed == {"checkpoints/epoch_00001.pt.json", "checkpoints/epoch_00002.pt.json"}

    # generate from the champion: wavs of the store's rate and example length
    gen = tmp_path / "gen"
    assert main(["generate", "--model", "models:/audio-wgan@champion", "--class", "mid",
                 "-n", "2", "--seed", "3", "--out", str(gen)]) == 0
    for k in range(2):
        audio, sr = sf.read(gen / f"mid_{k}.wav", dtype="float32")
        assert sr == 8000 and audio.shape == (TINY_MEL.segment_samples,)
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0

    # a second training run registers version 2 as candidate; the champion stays
    result = train(store=str(store), epochs=1, checkpoint_dir=str(tmp_path / "ck2"), **FAST)
    assert result["model_version"] == 2 and result["alias"] == "candidate"
    assert str(registry.version_by_alias("audio-wgan", "champion").version) == "1"
    assert str(registry.version_by_alias("audio-wgan", "candidate").version) == "2"
    # each run has a name of its own (MLflow's generated ones repeated with seed 0)
    names = [c.get_run(result["run_id"]).info.run_name, run.info.run_name]
    assert names[0] != names[1] and all(n.startswith("train-tiny-") for n in names), names


def test_resume_trains_exactly_the_missing_epochs(tmp_path, data_and_store, mlflow_uri):
    _, store = data_and_store
    ck = str(tmp_path / "ck")
    first = train(store=str(store), epochs=1, checkpoint_dir=ck, register=False, **FAST)
    assert first["epochs_trained"] == 1 and first["start"]["mode"] == "fresh"
    assert first["model"] is None and first["resident"] is True
    assert all(math.isfinite(v) for v in first["final"].values())
    # a fresh (non-resume) run into the same folder would mix two runs: refused
    with pytest.raises(TrainingError, match="already holds checkpoints"):
        train(store=str(store), epochs=2, checkpoint_dir=ck, register=False, **FAST)
    # streamed from the store this time (no memory budget): same data, same resume
    second = train(store=str(store), epochs=2, checkpoint_dir=ck, resume=True,
                   register=False, memory_budget_mb=0, **FAST)
    assert second["start"] == {"mode": "resume", "checkpoint": first["checkpoint"],
                               "epoch": 1, "skipped": []}
    assert second["epochs_trained"] == 1 and second["epoch"] == 2
    assert second["resident"] is False
    assert second["step"] == 2 * first["step"]
    assert [p.name for p in list_checkpoints(ck)] == ["epoch_00001.pt", "epoch_00002.pt"]
    # the second run's step metrics continue where the first run stopped
    hist = registry.client().get_metric_history(second["run_id"], "critic_loss")
    assert [m.step for m in hist] == [2]


def test_changed_store_refuses_resume_unless_warm_start(tmp_path, data_and_store,
                                                        mlflow_uri, capsys):
    data, store = data_and_store
    data2, store2 = tmp_path / "data", tmp_path / "mels.zarr"
    shutil.copytree(data, data2)
    shutil.copytree(store, store2)
    ck = str(tmp_path / "ck")
    train(store=str(store2), epochs=1, checkpoint_dir=ck, register=False, **FAST)
    write_tone_dataset(tmp_path / "more", clips=1, classes={"mid": 1200.0})
    shutil.copy(tmp_path / "more" / "mid" / "0.wav", data2 / "mid" / "extra.wav")
    precompute(str(data2), str(store2))
    assert len(MelStore.open(store2)) == 52

    capsys.readouterr()
    rc = main(["train", "--store", str(store2), "--preset", "tiny", "--epochs", "2",
               "--batch-size", "16", "--checkpoint-dir", ck, "--resume", "--no-register"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "store changed since the checkpoint" in err and "warm start" in err
    assert [p.name for p in list_checkpoints(ck)] == ["epoch_00001.pt"]

    warm = train(store=str(store2), epochs=2, checkpoint_dir=ck, resume=True, warm_start=True,
                 register=False, **FAST)
    assert warm["start"]["mode"] == "warm-start" and warm["start"]["skipped"] == []
    assert warm["epochs_trained"] == 1 and warm["epoch"] == 2


def test_nan_is_one_line_keeps_last_checkpoint_and_registers_nothing(
        tmp_path, data_and_store, mlflow_uri, monkeypatch, capsys):
    _, store = data_and_store
    real_loss = gan.trainer.critic_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss  # 3 critic steps an epoch

    monkeypatch.setattr(gan.trainer, "critic_loss", poisoned)
    ck = tmp_path / "ck"
    # 24 training rows (the held-out half of these 4-file classes is never trained on)
    rc = main(["train", "--store", str(store), "--preset", "tiny", "--epochs", "3",
               "--batch-size", "8", "--checkpoint-dir", str(ck), "--checkpoint-every", "1",
               "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "non-finite critic loss" in err and "epoch 2" in err and "step" in err
    assert "latest checkpoint stays epoch_00001.pt" in err and "nothing registered" in err
    assert [p.name for p in list_checkpoints(ck)] == ["epoch_00001.pt"]
    assert (ck / "wgan_audio.pth.tar").resolve().name == "epoch_00001.pt"
    with pytest.raises(registry.RegistryError):
        registry.list_versions("audio-wgan")
    c = registry.client()
    runs = c.search_runs([c.get_experiment_by_name("audio-wgan").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_bad_parameters_are_one_line(tmp_path, data_and_store, mlflow_uri, capsys):
    _, store = data_and_store
    with pytest.raises(TrainingError, match=r"^invalid preset: .*'huge'"):
        train(store=str(store), preset="huge", checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(TrainingError, match=r"^invalid batch_size"):
        train(store=str(store), batch_size=0, checkpoint_dir=str(tmp_path / "ck"))
    for argv in (["--store", str(tmp_path / "nope.zarr")],
                 ["--store", str(store), "--epochs", "0"],
                 ["--store", str(store), "--device", "tpu"]):
        capsys.readouterr()
        assert main(["train", *argv, "--checkpoint-dir", str(tmp_path / "ck")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("audio-wgan train: error:"), err
    assert not (tmp_path / "ck").exists()


def test_a_failed_block_is_retried_from_its_input_checkpoint(tmp_path, data_and_store,
                                                             mlflow_uri, monkeypatch):
    """Issue 13 item 2: blocks hand each other checkpoint files, so a block that fails
    half-way (after epoch 3 of the block 3-4) runs again from the epoch-2 checkpoint and
    the run ends with exactly the weights of a run that never failed."""
    import torch

    from storage import fault_points
    from storage.checkpoints import load_checkpoint

    _, store = data_and_store
    run = {**FAST, "checkpoint_every": 2, "epochs": 4, "register": False, "render": False}
    clean = train(store=str(store), checkpoint_dir=str(tmp_path / "clean"), **run)

    monkeypatch.setattr(fault_points, "_counts", {})
    monkeypatch.setenv(fault_points.FAIL_ENV, "block-epoch3:1")
    with pytest.raises(fault_points.InjectedFault):  # no retries: the run fails
        train(store=str(store), checkpoint_dir=str(tmp_path / "once"), **run)
    assert [p.name for p in list_checkpoints(tmp_path / "once")] == ["epoch_00002.pt"]

    monkeypatch.setattr(fault_points, "_counts", {})
    retried = train(store=str(store), checkpoint_dir=str(tmp_path / "retried"),
                    block_retries=1, **run)
    # epoch 3 was reached twice: by the failed try and by the retry
    assert fault_points._counts[(fault_points.FAIL_ENV, "block-epoch3")] == 2
    assert retried["epoch"] == clean["epoch"] == 4 and retried["step"] == clean["step"]
    a, b = load_checkpoint(clean["checkpoint"]), load_checkpoint(retried["checkpoint"])
    for net in ("generator", "critic", "ema_generator"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after the retry"


def test_a_block_refuses_a_start_checkpoint_that_is_not_the_one_handed_on(tmp_path,
                                                                          data_and_store):
    """The SHA-256 travels with the path: a file replaced between blocks is one line."""
    from flows.train import TrainParams
    from tasks.train import block_spec, checkpoint_meta, checkpoint_ref, train_epochs
    from tasks.train_data import describe_training_data

    _, store = data_and_store
    p = TrainParams(store=str(store), epochs=2, checkpoint_dir=str(tmp_path / "ck"), **FAST)
    cfg = p.train_config()
    meta = checkpoint_meta(describe_training_data(str(store), 16, 0), cfg)
    spec = {**block_spec(cfg, str(store), meta, p.run_plan(), None), "until": 1}
    first = train_epochs(spec, None)
    assert first["epoch"] == 1 and first["sha256"] == checkpoint_ref(first["checkpoint"])["sha256"]
    second = train_epochs({**spec, "until": 2}, checkpoint_ref(first["checkpoint"]))
    assert second["epoch"] == 2
    with pytest.raises(TrainingError, match="not the checkpoint the previous block wrote"):
        train_epochs({**spec, "until": 2}, {"path": first["checkpoint"],
                                            "sha256": second["sha256"]})
