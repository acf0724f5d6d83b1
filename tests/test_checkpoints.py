"""Checkpoint files: atomic, hash-verified, weights_only, pruned, damage-tolerant."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from gan.data import ResidentData
from gan.trainer import TrainConfig, WGANTrainer
from storage.checkpoints import (
    LATEST_NAME,
    CheckpointError,
    check_fingerprint,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)


class Unpicklable:
    """Stands for any object a weights_only load must not reconstruct."""


META = {"fingerprint": "abc123", "store": "/tmp/store.zarr"}


@pytest.fixture(scope="module")
def trained() -> WGANTrainer:
    t = WGANTrainer(TrainConfig(preset="tiny", batch_size=8, seed=1, device="cpu"), 2, 16, 16)
    g = torch.Generator().manual_seed(0)
    t.train_epoch(ResidentData(torch.randn(16, 1, 16, 16, generator=g), torch.arange(16) % 2))
    return t


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_round_trip_weights_only_and_latest_link(tmp_path: Path, trained: WGANTrainer) -> None:
    state = trained.state_dict()
    p = save_checkpoint(tmp_path, state, epoch=1, meta=META)
    assert p.name == "epoch_00001.pt"
    assert (tmp_path / "epoch_00001.pt.sha256").read_text().endswith("  epoch_00001.pt\n")
    link = tmp_path / LATEST_NAME
    assert link.is_symlink() and link.resolve() == p.resolve()
    # plain torch.load with weights_only=True must accept it: no pickled objects inside
    raw = torch.load(p, weights_only=True)
    assert raw["meta"] == META
    loaded, path = load_latest(tmp_path)
    assert path == p and loaded["meta"] == META
    assert _equal({k: v for k, v in loaded.items() if k != "meta"}, state)
    fresh = WGANTrainer(TrainConfig(preset="tiny", batch_size=8, seed=5, device="cpu"), 2, 16, 16)
    fresh.load_state_dict(loaded)
    assert _equal(fresh.state_dict()["generator"], state["generator"])
    assert fresh.epoch == 1 and fresh.step == trained.step


def test_keeps_last_k_and_link_follows(tmp_path: Path, trained: WGANTrainer) -> None:
    state = trained.state_dict()
    for epoch in range(1, 6):
        save_checkpoint(tmp_path, state, epoch, keep_last=2, meta=META)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_00004.pt", "epoch_00005.pt"]
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(
        ["epoch_00004.pt", "epoch_00004.pt.sha256", "epoch_00005.pt", "epoch_00005.pt.sha256",
         LATEST_NAME])
    assert os.readlink(tmp_path / LATEST_NAME) == "epoch_00005.pt"
    with pytest.raises(CheckpointError, match="later checkpoint"):
        save_checkpoint(tmp_path, state, 3, meta=META)
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, state, 6, keep_last=0)


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_sidecar", "empty"])
def test_damaged_latest_falls_back_with_warning(tmp_path: Path, trained: WGANTrainer,
                                                caplog: pytest.LogCaptureFixture,
                                                damage: str) -> None:
    state = trained.state_dict()
    save_checkpoint(tmp_path, state, 1, meta={**META, "n": 1})
    latest = save_checkpoint(tmp_path, state, 2, meta={**META, "n": 2})
    data = latest.read_bytes()
    if damage == "flip":
        i = len(data) // 2
        latest.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif damage == "truncate":
        latest.write_bytes(data[: len(data) // 3])
    elif damage == "no_sidecar":
        latest.with_name(latest.name + ".sha256").unlink()
    else:
        latest.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="audio_wgan"):
        loaded, path = load_latest(tmp_path)
    assert path.name == "epoch_00001.pt" and loaded["meta"]["n"] == 1
    assert any("epoch_00002.pt" in r.getMessage() for r in caplog.records)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(latest)
    assert "\n" not in str(err.value)


def test_all_damaged_is_an_error_and_empty_dir_is_none(tmp_path: Path,
                                                       trained: WGANTrainer) -> None:
    assert load_latest(tmp_path / "missing") is None
    assert load_latest(tmp_path) is None
    p = save_checkpoint(tmp_path, trained.state_dict(), 1, meta=META)
    p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_latest(tmp_path)


def test_pickled_objects_are_refused_even_with_a_valid_hash(tmp_path: Path) -> None:
    """A checkpoint is data: a file that needs unpickling arbitrary objects never loads."""
    import hashlib

    p = tmp_path / "epoch_00001.pt"
    torch.save({"obj": Unpicklable()}, p)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    (tmp_path / "epoch_00001.pt.sha256").write_text(f"{digest}  epoch_00001.pt\n")
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(p)


def test_leftover_temp_files_are_ignored_and_cleaned(tmp_path: Path,
                                                     trained: WGANTrainer) -> None:
    state = trained.state_dict()
    save_checkpoint(tmp_path, state, 1, meta=META)
    # a writer killed mid-save leaves its temp file (same prefix the writer uses)
    stale = tmp_path / ".tmp-epoch_00002.pt.x1y2z3"
    stale.write_bytes(b"half a checkpoint")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_00001.pt"]
    _, path = load_latest(tmp_path)
    assert path.name == "epoch_00001.pt"
    save_checkpoint(tmp_path, state, 2, meta=META)
    assert not stale.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_non_finite_state_is_never_saved(tmp_path: Path, trained: WGANTrainer) -> None:
    state = trained.state_dict()
    save_checkpoint(tmp_path, state, 1, meta=META)
    bad = dict(state)
    bad["generator"] = dict(state["generator"])
    key = next(iter(bad["generator"]))
    bad["generator"][key] = bad["generator"][key].clone().fill_(float("nan"))
    with pytest.raises(CheckpointError, match=f"non-finite values in generator.{key}"):
        save_checkpoint(tmp_path, bad, 2, meta=META)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_00001.pt"]
    assert os.readlink(tmp_path / LATEST_NAME) == "epoch_00001.pt"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_fingerprint_refusal() -> None:
    check_fingerprint({"fingerprint": "abc123"}, "abc123", warm_start=False)
    with pytest.raises(CheckpointError, match="store changed") as err:
        check_fingerprint({"fingerprint": "abc123"}, "def456", warm_start=False)
    assert "\n" not in str(err.value) and "warm start" in str(err.value)
    check_fingerprint({"fingerprint": "abc123"}, "def456", warm_start=True)
    with pytest.raises(CheckpointError, match="no store fingerprint"):
        check_fingerprint({}, "def456", warm_start=False)


def _with_valid_hash(path: Path, payload: object) -> Path:
    """A file the hash sidecar vouches for, whatever it holds (what a careless tool or a
    hostile hand can write: the hash only proves the bytes were not changed since)."""
    import hashlib

    torch.save(payload, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return path


@pytest.mark.parametrize("payload", [
    {}, {"meta": {}}, {"generator": {}, "critic": {}, "ema_generator": {}, "epoch": 2,
                       "step": 1},
    "drop-critic", "negative-epoch", "nan-ema", "meta-not-dict",
])
def test_verified_but_incomplete_checkpoint_falls_back(tmp_path: Path, trained: WGANTrainer,
                                                       payload: object) -> None:
    state = trained.state_dict()
    save_checkpoint(tmp_path, state, 1, meta={**META, "n": 1})
    if payload == "drop-critic":
        payload = {k: v for k, v in state.items() if k != "critic"}
    elif payload == "negative-epoch":
        payload = {**state, "epoch": -3}
    elif payload == "nan-ema":
        ema = dict(state["ema_generator"])
        key = next(k for k, v in ema.items() if v.is_floating_point())
        ema[key] = torch.full_like(ema[key], float("nan"))
        payload = {**state, "ema_generator": ema}
    elif payload == "meta-not-dict":
        payload = {**state, "meta": [1, 2]}
    bad = _with_valid_hash(tmp_path / "epoch_00002.pt", payload)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert "\n" not in str(err.value) and str(err.value).startswith("epoch_00002.pt: ")
    loaded, path = load_latest(tmp_path)
    assert path.name == "epoch_00001.pt" and loaded["meta"]["n"] == 1


def test_warm_start_from_a_verified_empty_checkpoint_falls_back(tmp_path: Path,
                                                                trained: WGANTrainer) -> None:
    """`{}` with a valid hash used to end a warm start in KeyError: 'generator'."""
    import numpy as np

    from gan.spectral import MelConfig
    from tasks.train import prepare_trainer
    from tasks.train_data import TrainingData

    save_checkpoint(tmp_path, trained.state_dict(), 1, meta=META)
    _with_valid_hash(tmp_path / "epoch_00002.pt", {})
    data = TrainingData(data=ResidentData(torch.zeros(4, 1, 16, 16), torch.arange(4) % 2),
                        classes=["a", "b"], mel=MelConfig(n_mels=16, frames=16),
                        mean=np.zeros(16, np.float32), std=np.ones(16, np.float32),
                        fingerprint="changed", store="/tmp/s", rows=4, resident=True)
    cfg = TrainConfig(preset="tiny", batch_size=8, seed=1, device="cpu")
    trainer, start = prepare_trainer(cfg, data, str(tmp_path), resume=False, warm_start=True)
    assert start.mode == "warm-start" and start.checkpoint.endswith("epoch_00001.pt")
    assert trainer.epoch == 1


def test_bundle_exported_from_the_checkpoint_alone(tmp_path: Path,
                                                   trained: WGANTrainer) -> None:
    """Issue 13 item 6: the checkpoint holds the statistics, classes and mel config, so a
    bundle needs nothing else (no store)."""
    import numpy as np

    from gan.sampling import make_noise
    from gan.spectral import MelConfig
    from storage.checkpoints import EXPORT_META, export_bundle_from_checkpoint
    from storage.model_bundle import load_bundle_dir

    mel = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=16, frames=16)
    mean, std = np.linspace(-60, -20, 16), np.full(16, 7.5)
    meta = {**META, "classes": ["a", "b"], "mel": mel.to_dict(), "preset": "tiny",
            "norm_mean": mean.tolist(), "norm_std": std.tolist()}
    assert set(EXPORT_META) <= set(meta)
    ckpt = save_checkpoint(tmp_path / "ck", trained.state_dict(), 1, meta=meta)
    out = export_bundle_from_checkpoint(ckpt, tmp_path / "bundle")
    b = load_bundle_dir(out)
    assert b.class_names == ["a", "b"] and b.mel == mel and b.preset == "tiny"
    assert b.meta["epoch"] == 1 and b.meta["fingerprint"] == META["fingerprint"]
    np.testing.assert_allclose(b.normaliser.mean.ravel().numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(b.normaliser.std.ravel().numpy(), std, rtol=1e-6)
    for k, v in trained.ema_generator.state_dict().items():
        assert torch.equal(b.generator.state_dict()[k], v), k
    noise, labels = make_noise(2, b.noise_dim, 0), torch.tensor([0, 1])
    with torch.no_grad():
        trained.ema_generator.eval()
        assert torch.equal(b.generator(noise, labels), trained.ema_generator(noise, labels))
    # a checkpoint written before the statistics were recorded says what it lacks
    old = save_checkpoint(tmp_path / "old", trained.state_dict(), 1, meta=META)
    with pytest.raises(CheckpointError, match="records no classes, mel, preset, norm_mean"):
        export_bundle_from_checkpoint(old, tmp_path / "b2")
    assert not (tmp_path / "b2").exists()


def test_training_checkpoint_meta_holds_what_export_needs() -> None:
    """The payload tasks/train.py builds carries every EXPORT_META key."""
    import numpy as np

    from gan.spectral import MelConfig
    from storage.checkpoints import EXPORT_META
    from tasks.train import checkpoint_meta
    from tasks.train_data import TrainingData, summarise

    data = TrainingData(data=ResidentData(torch.zeros(2, 1, 16, 16), torch.arange(2)),
                        classes=["a", "b"], mel=MelConfig(n_mels=16, frames=16),
                        mean=np.zeros(16, np.float32), std=np.ones(16, np.float32),
                        fingerprint="f", store="/tmp/s", rows=2, resident=True)
    meta = checkpoint_meta(summarise(data), TrainConfig(preset="tiny", device="cpu"))
    assert set(EXPORT_META) <= set(meta)
    assert meta["norm_std"] == [1.0] * 16
