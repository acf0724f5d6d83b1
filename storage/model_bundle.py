"""A trained generator on disk: weights as a state_dict plus plain-JSON metadata.

This is the payload of a registered model (and of `render`/`generate`): loading it uses
`torch.load(weights_only=True)` and `json`, so it never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan.models import Generator, get_preset
from gan.sampling import class_index, make_noise, mels_to_audio, sample_db
from gan.spectral import MelConfig, MelInverter, Normaliser

WEIGHTS_FILE = "generator.pt"
META_FILE = "model.json"
FORMAT_VERSION = 1


@dataclass
class GeneratorBundle:
    """Everything needed to turn (class, seed) into audio."""

    generator: Generator
    class_names: list[str]
    mel: MelConfig
    normaliser: Normaliser
    preset: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def noise_dim(self) -> int:
        return self.generator.noise_dim


def save_bundle(out_dir: str | Path, generator_state: dict[str, torch.Tensor], preset: str,
                class_names: list[str], mel: MelConfig, mean: np.ndarray | torch.Tensor,
                std: np.ndarray | torch.Tensor, meta: dict[str, Any] | None = None) -> Path:
    """Write generator.pt (state_dict, CPU tensors) and model.json into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in generator_state.items()}
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"refusing to save a generator with non-finite weights ({k})")
    torch.save(state, out / WEIGHTS_FILE)
    doc = {
        "format_version": FORMAT_VERSION,
        "preset": preset,
        "class_names": list(class_names),
        "mel": mel.to_dict(),
        "n_mels": mel.n_mels,
        "frames": mel.frames,
        "norm_mean": [float(x) for x in np.asarray(mean, dtype=np.float64).ravel()],
        "norm_std": [float(x) for x in np.asarray(std, dtype=np.float64).ravel()],
        "meta": meta or {},
    }
    (out / META_FILE).write_text(json.dumps(doc, indent=2))
    return out


def load_bundle_dir(path: str | Path, device: str | torch.device = "cpu") -> GeneratorBundle:
    """Rebuild the EMA generator (eval mode) from a bundle directory."""
    p = Path(path)
    if not (p / META_FILE).is_file() or not (p / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{p} is not a generator bundle (no {META_FILE}/{WEIGHTS_FILE})")
    doc = json.loads((p / META_FILE).read_text())
    mel = MelConfig.from_dict(doc["mel"])
    gen = Generator(len(doc["class_names"]), mel.n_mels, mel.frames, get_preset(doc["preset"]))
    state = torch.load(p / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    gen.load_state_dict(state)
    gen.to(device).eval()
    normaliser = Normaliser(torch.tensor(doc["norm_mean"]), torch.tensor(doc["norm_std"]))
    return GeneratorBundle(gen, list(doc["class_names"]), mel, normaliser, doc["preset"],
                           doc.get("meta", {}))


MAX_CLIPS_PER_REQUEST = 512  # keeps one request's spectrograms and audio well inside memory


def synthesise(bundle: GeneratorBundle, class_name: str, count: int = 1, seed: int = 0,
               inverter: MelInverter | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` clips of one class -> (waves (count, T) peak-normalised, dB mels).

    The one code path behind `generate`, the served pyfunc model and anything else that
    turns (class, seed) into audio, so the same seed gives the same clip everywhere.
    """
    if not 1 <= int(count) <= MAX_CLIPS_PER_REQUEST:
        raise ValueError(f"count must be between 1 and {MAX_CLIPS_PER_REQUEST}, not {count}")
    label = class_index(bundle.class_names, class_name)
    noise = make_noise(int(count), bundle.noise_dim, int(seed))
    labels = torch.full((int(count),), label, dtype=torch.long)
    db = sample_db(bundle.generator, bundle.normaliser, labels, noise)
    waves = mels_to_audio(db, inverter or MelInverter(bundle.mel))
    return waves, db
