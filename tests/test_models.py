"""Shapes of the seed's conditional generator and critic in every preset."""

from __future__ import annotations

import pytest
import torch

from gan.models import OUTPUT_RANGE, PRESETS, build_models, get_preset


def test_seed_preset_matches_the_seed_document() -> None:
    g, d = build_models(5, 128, 256, "seed")
    g.eval()
    noise = torch.randn(2, g.noise_dim)
    labels = torch.tensor([0, 4])
    with torch.no_grad():
        x = g(noise, labels)
        score = d(x, labels)
    assert x.shape == (2, 1, 128, 256)
    assert score.shape == (2,)
    assert g.noise_dim == 100 and PRESETS["seed"].embed_dim == 16
    convs = [m for m in d.net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 1]
    ups = [m for m in g.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [u.out_channels for u in ups] == [256, 128, 64, 1]


@pytest.mark.parametrize("preset", ["small", "tiny"])
@pytest.mark.parametrize(("n_mels", "frames"), [(32, 32), (64, 128)])
def test_smaller_presets(preset: str, n_mels: int, frames: int) -> None:
    g, d = build_models(3, n_mels, frames, preset)
    labels = torch.tensor([0, 1, 2])
    x = g(torch.randn(3, g.noise_dim), labels)
    assert x.shape == (3, 1, n_mels, frames)
    assert x.abs().max() <= OUTPUT_RANGE
    assert d(x, labels).shape == (3,)
    n_g = sum(p.numel() for p in g.parameters())
    n_seed = sum(p.numel() for p in build_models(3, n_mels, frames, "seed")[0].parameters())
    assert n_g < n_seed


@pytest.mark.parametrize(("n_mels", "frames"), [(30, 32), (32, 40), (8, 16)])
def test_shapes_must_divide_by_16(n_mels: int, frames: int) -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        build_models(2, n_mels, frames, "tiny")


def test_unknown_preset_is_one_line() -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'") as err:
        get_preset("huge")
    assert "\n" not in str(err.value)
