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
