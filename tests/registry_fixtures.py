"""Helpers for registry tests: a bundle from an untrained tiny generator, registered for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gan.models import build_models
from gan.spectral import MelConfig
from storage.model_bundle import save_bundle

TINY_MEL = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, frames=32)
CLASSES = ["hum", "beep", "noise"]


def make_bundle(out_dir: Path, seed: int = 0, classes: list[str] | None = None) -> Path:
    """An untrained (but deterministic) tiny generator saved as a bundle."""
    classes = classes or CLASSES
    torch.manual_seed(seed)
    gen, _ = build_models(len(classes), TINY_MEL.n_mels, TINY_MEL.frames, "tiny")
    mean = np.linspace(-60.0, -20.0, TINY_MEL.n_mels)
    std = np.full(TINY_MEL.n_mels, 8.0)
    return save_bundle(out_dir, gen.state_dict(), "tiny", classes, TINY_MEL, mean, std,
                       {"note": "untrained test bundle"})


def register_bundle(bundle_dir: Path, name: str = "audio-wgan", experiment: str = "audio-wgan",
                    tags: dict | None = None) -> int:
    """Log the bundle into a fresh run and register it; return the version number."""
    from storage import registry
    from tasks import tracking

    run_id = tracking.start_run(experiment, {"preset": "tiny"}, {"test": "1"})
    mv = registry.log_generator_model(bundle_dir, run_id, name, tags or {"preset": "tiny"})
    tracking.end_run(run_id)
    return int(mv.version)


TONE_CLASSES = {"low": 300.0, "mid": 1000.0, "high": 2500.0}


def write_tone_dataset(root: Path, clips: int = 4, seconds: float = 1.0, sr: int = 8000,
                       classes: dict[str, float] | None = None) -> Path:
    """root/<class>/<k>.wav: a slightly detuned tone per clip plus a little noise."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    for name, freq in (classes or TONE_CLASSES).items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(clips):
            t = np.arange(int(seconds * sr)) / sr
            x = 0.5 * np.sin(2 * np.pi * freq * (1 + 0.03 * k) * t)
            x += 0.01 * rng.standard_normal(t.shape)
            sf.write(root / name / f"{k}.wav", x.astype(np.float32), sr)
    return root


_TEMPLATE: dict[str, Path] = {}


def _migrated_template() -> Path:
    """An empty MLflow SQLite database with every migration applied, made once per process.

    A fresh database costs ~10 s of Alembic migrations on a busy 2-core machine; copying a
    migrated one costs milliseconds, and MLflow skips migrating a database whose tables exist.
    """
    if "db" not in _TEMPLATE:
        import tempfile

        from mlflow.store.model_registry.sqlalchemy_store import (
            SqlAlchemyStore as RegistryStore,
        )
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        d = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
        uri = f"sqlite:///{d / 'template.db'}"
        SqlAlchemyStore(uri, (d / "art").as_uri())
        RegistryStore(uri)
        _TEMPLATE["db"] = d / "template.db"
    return _TEMPLATE["db"]


def fresh_mlflow(tmp_path: Path, monkeypatch) -> str:
    """Like conftest's `mlflow_uri` (fresh SQLite tracking + registry, env set), but copied
    from a pre-migrated template."""
    import shutil

    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(_migrated_template(), db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    art = tmp_path / "mlartifacts"
    art.mkdir(exist_ok=True)
    monkeypatch.setenv("AUDIO_WGAN_ARTIFACT_ROOT", str(art))
    return uri


def one_torch_thread():
    """Generator for an autouse fixture: tiny models on a shared 2-core machine run 10-50x
    faster with one intra-op thread (two spinning OpenMP threads fight other processes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
