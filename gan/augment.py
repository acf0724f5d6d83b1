"""Differentiable augmentation of what the critic sees (DiffAugment, Zhao et al. 2020).

With a few thousand training examples the critic memorises the real rows and its feedback
stops teaching the generator. DiffAugment applies the same family of random, differentiable
transforms to real and generated examples before every critic call (in the critic's and in
the generator's step), so the critic cannot tell them apart by memory, and the generator is
not taught to produce the augmentations (they are applied to both sides, and gradients flow
through them). For log-mel spectrograms (batch, 1, n_mels, frames), normalised to mean 0:

- `translation`: shift along time by up to 1/8 of the frames, filling with 0 (the mean);
  a sound event's timing within an example does not decide its class;
- `cutout`: one time band (up to 1/4 of the frames) and one mel band (up to 1/4 of the
  mel bins) set to 0, as SpecAugment masks.

Pitch (a shift along mel bins) is left alone: it changes what a sound is.
"""

from __future__ import annotations

import torch

from gan.presets import AUGMENTS as POLICIES  # the names a Preset accepts


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], rng: torch.Generator
                 ) -> torch.Tensor:
    """`x` with each transform of `policy` applied, per example, drawn from `rng`."""
    for name in policy:
        x = _TRANSFORMS[name](x, rng)
    return x


def _uniform_int(n: int, high: int, like: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """n integers in [0, high), on `like`'s device."""
    return torch.randint(0, max(high, 1), (n,), device=like.device, generator=rng)


def translate_time(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    b, frames = x.shape[0], x.shape[-1]
    reach = max(frames // 8, 1)
    shift = _uniform_int(b, 2 * reach + 1, x, rng) - reach  # in [-reach, reach]
    src = torch.arange(frames, device=x.device).view(1, frames) - shift.view(b, 1)
    inside = (src >= 0) & (src < frames)
    idx = src.clamp(0, frames - 1).view(b, 1, 1, frames).expand_as(x)
    return torch.gather(x, -1, idx) * inside.view(b, 1, 1, frames).to(x.dtype)


def _band_mask(b: int, size: int, like: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """(b, size) bool: True outside one random band of width < size // 4 + 1 per row."""
    width = _uniform_int(b, size // 4 + 1, like, rng)
    start = (torch.rand(b, device=like.device, generator=rng) * (size - width + 1)).long()
    pos = torch.arange(size, device=like.device).view(1, size)
    return (pos < start.view(b, 1)) | (pos >= (start + width).view(b, 1))


def cutout(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    b, n_mels, frames = x.shape[0], x.shape[-2], x.shape[-1]
    keep_t = _band_mask(b, frames, x, rng).view(b, 1, 1, frames)
    keep_f = _band_mask(b, n_mels, x, rng).view(b, 1, n_mels, 1)
    return x * (keep_t & keep_f).to(x.dtype)


_TRANSFORMS = {"translation": translate_time, "cutout": cutout}
assert set(_TRANSFORMS) == set(POLICIES)
