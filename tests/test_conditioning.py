"""The conditioning switches of a preset, the example-cutting policies, and the time budget.

Each switch is checked for what it is for: a projection critic's score depends on the label
and an unconditional one's does not; conditional BatchNorm makes the class change the
picture for the same noise; minibatch stddev never mixes real and generated rows; AC-GAN
trains its head; cutting never leaves zero padding unless asked to; `fit` stops at an epoch
boundary once its budget is spent (a fake clock: no timing).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clips.features import pad_short, segment, split_offsets
from gan.data import ResidentData
from gan.models import Critic, Generator, minibatch_stddev
from gan.presets import BUILTIN_PRESETS, PRESETS, Preset, register_preset
from gan.spectral import LEGACY_POLICIES, MelConfig
from gan.trainer import TimeBudget, TrainConfig, WGANTrainer

TINY = PRESETS["tiny"]
N_CLASSES, H, W = 3, 32, 32


def variant(name: str, **switches: object) -> Preset:
    return register_preset(TINY.variant(f"test-{name}", **switches))


def test_builtin_presets_are_the_cli_choices() -> None:
    from flows.defaults import DEFAULT_PRESET, PRESET_NAMES

    assert PRESET_NAMES == BUILTIN_PRESETS and DEFAULT_PRESET in PRESET_NAMES
    assert {"seed", "small", "tiny", "small-proj-cbn"} <= set(BUILTIN_PRESETS)
    seed = PRESETS["seed"]  # the seed document's conditioning, unchanged
    assert (seed.critic_cond, seed.gen_norm, seed.upsample, seed.mbstd, seed.ac_weight) == \
        ("concat", "bn", "transpose", False, 0.0)


def test_projection_critic_reads_the_label_and_an_unconditional_one_does_not() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 1, H, W)
    a, b = torch.zeros(6, dtype=torch.long), torch.full((6,), 2)
    proj = Critic(N_CLASSES, H, W, variant("proj", critic_cond="projection"))
    assert not torch.allclose(proj(x, a), proj(x, b))
    assert not any(isinstance(m, torch.nn.Linear) and m.out_features == H * W
                   for m in proj.modules())  # no label map at the input
    none = Critic(N_CLASSES, H, W, variant("none", critic_cond="none"))
    assert torch.equal(none(x, a), none(x, b))


def test_conditional_batchnorm_lets_the_class_change_the_picture() -> None:
    torch.manual_seed(0)
    g = Generator(N_CLASSES, H, W, variant("cbn", gen_norm="cbn")).eval()
    z = torch.randn(1, g.noise_dim).repeat(N_CLASSES, 1)
    labels = torch.arange(N_CLASSES)
    with torch.no_grad():
        for norm in g.norms:  # as after training: per-class scales and shifts
            torch.nn.init.normal_(norm.gamma.weight, std=0.5)
            torch.nn.init.normal_(norm.beta.weight, std=0.5)
        out = g(z, labels)
    assert out.shape == (N_CLASSES, 1, H, W)
    assert (out[0] - out[1]).abs().mean() > 0.05 and (out[1] - out[2]).abs().mean() > 0.05


def test_resize_upsampling_has_no_transposed_convolution() -> None:
    g = Generator(N_CLASSES, H, W, variant("resize", upsample="resize"))
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
    assert g(torch.randn(2, g.noise_dim), torch.tensor([0, 1])).shape == (2, 1, H, W)


def test_minibatch_stddev_groups_never_mix_real_and_generated_rows() -> None:
    real, fake = torch.randn(8, 4, 2, 2), torch.randn(8, 4, 2, 2) * 100
    both = minibatch_stddev(torch.cat([real, fake]))
    alone = minibatch_stddev(real)
    assert torch.equal(both[:8], alone)  # the generated half does not leak into real groups
    assert minibatch_stddev(torch.randn(6, 4, 2, 2)).shape == (6, 5, 2, 2)  # group shrinks
    critic = Critic(N_CLASSES, H, W, variant("mbstd", mbstd=True))
    assert critic.batch_coupled


def test_an_auxiliary_classifier_needs_a_critic_blind_to_the_label() -> None:
    with pytest.raises(ValueError, match="auxiliary classifier needs a critic") as e:
        TINY.variant("bad", ac_weight=1.0)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="critic_cond must be one of"):
        TINY.variant("bad", critic_cond="film")


@pytest.mark.parametrize("switches", [
    {"critic_cond": "projection", "gen_norm": "cbn"},
    {"critic_cond": "none", "ac_weight": 1.0},
    {"critic_cond": "projection", "ac_weight": 0.5, "mbstd": True, "upsample": "resize"},
    {"mbstd": True},
])
def test_every_switch_trains_and_resumes_exactly(switches: dict) -> None:
    preset = variant("train-" + "-".join(sorted(switches)), **switches)
    x = torch.randn(48, 1, H, W).clamp(-4, 4)
    y = torch.arange(48) % N_CLASSES
    cfg = TrainConfig(preset=preset.name, batch_size=8, n_critic=2, device="cpu", seed=3)
    a = WGANTrainer(cfg, N_CLASSES, H, W)
    a.fit(ResidentData(x, y), 1)
    state = a.state_dict()
    a.fit(ResidentData(x, y), 2)
    b = WGANTrainer(cfg, N_CLASSES, H, W)
    b.load_state_dict(state)
    b.fit(ResidentData(x, y), 2)
    assert a.weights_finite() and a.epoch == b.epoch == 2
    for k, v in a.generator.state_dict().items():
        assert torch.equal(v, b.generator.state_dict()[k]), k
    if preset.ac_weight:
        assert a.critic.aux is not None and a.critic.aux.weight.grad is not None


def test_fit_stops_at_the_first_epoch_boundary_after_the_budget() -> None:
    ticks = iter(range(1000))
    budget = TimeBudget(2.5, clock=lambda: float(next(ticks)))  # t0 = 0; +1 per look
    seen: list[int] = []
    cfg = TrainConfig(preset="tiny", batch_size=8, n_critic=1, device="cpu")
    tr = WGANTrainer(cfg, N_CLASSES, H, W)
    x, y = torch.randn(16, 1, H, W), torch.arange(16) % N_CLASSES
    history = tr.fit(ResidentData(x, y), 10, on_epoch=lambda s: seen.append(s.epoch),
                     should_stop=budget.exhausted)
    assert [s.epoch for s in history] == seen == [1, 2, 3]  # looks at 1, 2, 3: 3 >= 2.5
    assert tr.epoch == 3
    assert tr.fit(ResidentData(x, y), 3) == []  # already there
    with pytest.raises(ValueError, match="positive number of seconds"):
        TimeBudget(0)


# ------------------------------------------------------------------------ cutting clips

CFG = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, frames=32)  # s=1984


def test_the_last_example_ends_at_the_clip_end_and_short_remainders_are_dropped() -> None:
    s = CFG.segment_samples
    assert split_offsets(8000, CFG) == [0, 2048, 4096, 8000 - s]
    assert split_offsets(2048 * 2 + s + 100, CFG) == [0, 2048, 4096]  # 100 samples: dropped
    assert split_offsets(s, CFG) == [0]
    legacy = MelConfig(**{**CFG.to_dict(), **LEGACY_POLICIES})
    assert split_offsets(8000, legacy) == [0, 2048, 4096, 6144]  # zero-padded tail
    wave = torch.randn(8000)
    segs, offsets = segment(wave, CFG)
    assert segs.shape == (4, s) and torch.equal(segs[-1], wave[-s:])  # all audio


@pytest.mark.parametrize("policy", ["noise", "loop", "zero-end"])
def test_short_clips_are_padded_by_policy(policy: str) -> None:
    s = CFG.segment_samples
    t = torch.arange(500, dtype=torch.float32)
    wave = 0.3 * torch.sin(t / 5) * (1 + (t > 250).float())  # quieter first half
    out = pad_short(wave, s, policy)
    assert out.shape == (s,) and torch.equal(out[:500], wave)
    if policy == "zero-end":
        assert not out[500:].any()
    elif policy == "loop":
        assert torch.equal(out[500:1000], wave)
    else:  # the clip's own floor, never digital silence, the same every time
        assert 0 < out[500:].abs().mean() < wave.abs().mean()
        assert torch.equal(out, pad_short(wave.clone(), s, policy))
    cfg = MelConfig(**{**CFG.to_dict(), "pad_policy": policy})
    segs, offsets = segment(wave, cfg)
    assert offsets == [0] and torch.equal(segs[0], out)


def test_old_stores_keep_the_policies_they_were_made_with() -> None:
    old = {k: v for k, v in CFG.to_dict().items() if k not in ("tail_policy", "pad_policy")}
    old["pad_policy"] = "zero-end"  # stores written before tail_policy existed
    cfg = MelConfig.from_dict(old)
    assert (cfg.tail_policy, cfg.pad_policy) == ("pad", "zero-end")
    assert (MelConfig().tail_policy, MelConfig().pad_policy) == ("end-grid", "noise")
    made_with_end = {**CFG.to_dict(), "tail_policy": "end"}  # stores made before end-grid
    assert MelConfig.from_dict(made_with_end).tail_policy == "end"


@pytest.mark.parametrize(("bad", "match"), [
    ({"f_min": 8000.0, "f_max": 100.0}, "f_min must be in"),
    ({"f_min": 300.0, "f_max": 100.0}, "f_max must be above f_min"),
    ({"f_max": 9000.0}, "at most sample_rate/2"),
    ({"n_mels": 200}, "at most n_fft/2"),
    ({"frames": 1}, "frames must be at least 2"),
    ({"pad_policy": "mirror"}, "pad_policy must be one of"),
    ({"tail_policy": "wrap"}, "tail_policy must be one of"),
    ({"sample_rate": 8000.5}, "sample_rate must be a positive integer"),
])
def test_a_mel_configuration_is_checked_as_a_whole(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        MelConfig(**{**CFG.to_dict(), **bad})
    assert "\n" not in str(e.value)


def test_noise_padding_is_the_same_on_every_pool() -> None:
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(700).astype(np.float32))
    a = pad_short(wave, CFG.segment_samples, "noise")
    b = pad_short(wave.clone(), CFG.segment_samples, "noise")
    assert torch.equal(a, b) and not torch.equal(a, pad_short(wave * 0.5, 1984, "noise"))
