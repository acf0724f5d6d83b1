"""DiffAugment for spectrograms (gan.augment) and its use by the trainer."""

from __future__ import annotations

import pytest
import torch

from gan.augment import cutout, diff_augment, translate_time
from gan.data import ResidentData
from gan.presets import PRESETS, Preset, register_preset
from gan.trainer import TrainConfig, WGANTrainer


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_translation_shifts_along_time_only_and_fills_with_the_mean() -> None:
    frame = torch.arange(1, 33, dtype=torch.float32)  # each frame holds its index + 1
    x = frame.view(1, 1, 1, 32).repeat(64, 1, 8, 1)
    y = translate_time(x, _rng())
    shifts = set()
    for out in y[:, 0]:
        assert torch.equal(out, out[:1].expand_as(out))  # all mel bins moved alike
        kept = torch.nonzero(out[0]).flatten()
        moved = kept - (out[0, kept].long() - 1)  # destination - source, per kept frame
        d = int(moved[0])
        assert abs(d) <= 32 // 8 and torch.equal(moved, torch.full_like(moved, d))
        assert 32 - len(kept) == abs(d)  # the frames shifted in are 0 (the mean)
        shifts.add(d)
    assert len(shifts) > 3  # drawn per example


def test_cutout_zeroes_one_time_band_and_one_mel_band() -> None:
    x = torch.ones(64, 1, 16, 32)
    y = cutout(x, _rng(1))
    for out in y[:, 0]:
        dead_t = (out == 0).all(dim=0)  # frames zero in every bin
        dead_f = (out == 0).all(dim=1)
        assert int(dead_t.sum()) <= 32 // 4 and int(dead_f.sum()) <= 16 // 4
        # what is zero is exactly the union of the two bands
        assert torch.equal(out == 0, dead_t.view(1, -1) | dead_f.view(-1, 1))
    assert (y == 0).any()


def test_augmentation_is_differentiable_and_reproducible() -> None:
    x = torch.randn(8, 1, 16, 32, requires_grad=True)
    a = diff_augment(x, ("translation", "cutout"), _rng(3))
    b = diff_augment(x, ("translation", "cutout"), _rng(3))
    assert torch.equal(a, b)
    a.sum().backward()
    assert x.grad is not None and 0 < int((x.grad != 0).sum()) < x.numel()


def test_unknown_augmentation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        Preset("x", (16, 8, 8, 4), (4, 8, 8, 16), augment=("flip",))


def test_an_augmented_preset_trains_and_resumes_exactly() -> None:
    """The transforms draw from the trainer's RNG, which checkpoints keep: a run resumed
    after epoch 1 ends bitwise where an uninterrupted one does."""
    register_preset(PRESETS["tiny"].variant("tiny-diffaug", critic_cond="projection",
                                            augment=("translation", "cutout")))
    cfg = TrainConfig(preset="tiny-diffaug", batch_size=8, device="cpu", seed=5)
    data = ResidentData(torch.randn(32, 1, 16, 32), torch.arange(32) % 2)
    straight = WGANTrainer(cfg, 2, 16, 32)
    straight.fit(data, 2)
    first = WGANTrainer(cfg, 2, 16, 32)
    first.fit(data, 1)
    resumed = WGANTrainer(cfg, 2, 16, 32)
    resumed.load_state_dict(first.state_dict())
    resumed.fit(data, 2)
    for k, v in straight.generator.state_dict().items():
        assert torch.equal(v, resumed.generator.state_dict()[k]), k
