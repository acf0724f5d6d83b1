"""Turning a generator into spectrograms and audio, deterministically.

Shared by rendering during training, `generate`, `render`, evaluation and the served
pyfunc model, so that the same seed gives the same clip everywhere.
"""

from __future__ import annotations

import torch

from gan.models import Generator
from gan.spectral import MelInverter, Normaliser, peak_normalise


def make_noise(n: int, noise_dim: int, seed: int) -> torch.Tensor:
    """(n, noise_dim) standard normal noise from a private CPU generator (device independent)."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(n, noise_dim, generator=g)


def fixed_grid(n_classes: int, per_class: int, noise_dim: int, seed: int = 1234
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same latents at every render; row-major (class, sample), one noise set per class."""
    noise = make_noise(per_class, noise_dim, seed).repeat(n_classes, 1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return noise, labels


@torch.no_grad()
def sample_db(generator: Generator, normaliser: Normaliser, labels: torch.Tensor,
              noise: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Generator output de-normalised to log-mel dB, (B, n_mels, frames) float32 on the CPU."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    out = []
    try:
        for i in range(0, len(labels), batch_size):
            x = generator(noise[i:i + batch_size].to(device), labels[i:i + batch_size].to(device))
            out.append(normaliser.denormalise(x[:, 0]).cpu())
    finally:
        generator.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def mels_to_audio(db: torch.Tensor, inverter: MelInverter, batch_size: int = 32) -> torch.Tensor:
    """log-mel dB (B, n_mels, frames) -> peak-normalised waveforms (B, T), batched Griffin-Lim."""
    waves = [inverter(db[i:i + batch_size]) for i in range(0, len(db), batch_size)]
    return peak_normalise(torch.cat(waves)) if waves else torch.empty(0)


def class_index(class_names: list[str], name: str) -> int:
    try:
        return class_names.index(name)
    except ValueError:
        raise ValueError(f"unknown class {name!r}; the model knows {class_names}") from None
