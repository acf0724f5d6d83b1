"""WGAN-GP trainer on the CPU: finite losses, learning, EMA, determinism, NaN guard, AMP."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

import gan.trainer as trainer_mod
from gan.data import ResidentData, StreamingData
from gan.losses import gradient_penalty, interpolate
from gan.trainer import NonFiniteLossError, TrainConfig, WGANTrainer

N_CLASSES, H, W = 3, 32, 32
CPU = torch.device("cpu")


def synthetic(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of normalised 'mels' that differ in which band is loud."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % N_CLASSES
    x = 0.3 * torch.randn(n, 1, H, W, generator=g) - 1.0
    for c in range(N_CLASSES):
        x[labels == c, :, c * 10:(c * 10) + 8, :] += 2.5
    return x.clamp(-4, 4), labels


def cfg(**kw: object) -> TrainConfig:
    base = {"preset": "tiny", "batch_size": 8, "seed": 7, "device": "cpu"}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable weights only (BatchNorm running stats move with every forward pass)."""
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train(c: TrainConfig, epochs: int, data: object | None = None) -> WGANTrainer:
    t = WGANTrainer(c, N_CLASSES, H, W)
    data = data or ResidentData(*synthetic())
    for _ in range(epochs):
        t.train_epoch(data)  # type: ignore[arg-type]
    return t


def test_losses_finite_weights_move_and_ema_trails() -> None:
    t = WGANTrainer(cfg(n_critic=2), N_CLASSES, H, W)
    g0, d0 = weights(t.generator), weights(t.critic)
    seen: list[dict] = []
    data = ResidentData(*synthetic())
    stats = [t.train_epoch(data, on_step=seen.append) for _ in range(2)]
    assert t.epoch == 2 and t.step == 6 and t.critic_step == 12  # 48 // 8 = 6 per epoch
    for s in stats:
        assert s.steps == 3 and s.samples_per_s > 0 and s.seconds > 0
        for v in (s.critic_loss, s.generator_loss, s.gradient_penalty, s.wasserstein):
            assert np.isfinite(v)
    assert [m["step"] for m in seen] == [1, 2, 3, 4, 5, 6]
    assert set(seen[0]) >= {"step", "critic_loss", "generator_loss", "gradient_penalty",
                            "wasserstein", "samples_per_s"}
    assert all(np.isfinite(m[k]) for m in seen for k in m)
    assert not same(g0, weights(t.generator)) and not same(d0, weights(t.critic))
    g, ema = weights(t.generator), weights(t.ema_generator)
    assert not same(g, ema)
    assert not t.ema_generator.training
    # buffers (BatchNorm running stats) are copied, not averaged
    for k, v in t.generator.named_buffers():
        assert torch.equal(v, ema[k])
    assert t.weights_finite()


def test_same_seed_is_bitwise_identical_and_seed_matters() -> None:
    a, b = train(cfg(), 2), train(cfg(), 2)
    for net in ("generator", "critic", "ema_generator"):
        assert same(weights(getattr(a, net)), weights(getattr(b, net))), net
    c = train(cfg(seed=8), 2)
    assert not same(weights(a.generator), weights(c.generator))


def test_epoch_smaller_than_n_critic_still_steps_generator() -> None:
    x, y = synthetic(10)
    t = WGANTrainer(cfg(batch_size=8), N_CLASSES, H, W)
    s = t.train_epoch(ResidentData(x, y))
    assert (t.critic_step, t.step, s.steps) == (1, 1, 1)
    # a set smaller than one batch is one batch of everything
    t2 = WGANTrainer(cfg(batch_size=64), N_CLASSES, H, W)
    batches = list(ResidentData(x, y).epoch_batches(0, 64, 0, CPU))
    assert len(batches) == 1 and batches[0][0].shape == (10, 1, H, W)
    assert t2.train_epoch(ResidentData(x, y)).steps == 1


def test_resident_shuffle_depends_only_on_seed_and_epoch() -> None:
    x, y = synthetic(20)
    data = ResidentData(x.half(), y.numpy())  # float16 and numpy labels are accepted
    order = [torch.cat([b[1] for b in data.epoch_batches(e, 4, 3, CPU)]) for e in (0, 1, 0)]
    assert torch.equal(order[0], order[2]) and not torch.equal(order[0], order[1])
    first = next(data.epoch_batches(0, 4, 3, CPU))[0]
    assert first.dtype == torch.float32 and first.shape == (4, 1, H, W)
    assert data.steps_per_epoch(6) == 3  # 20 // 6, the last partial batch dropped
    with pytest.raises(ValueError, match="labels"):
        ResidentData(x, y[:5])


def test_streaming_matches_resident_bitwise() -> None:
    x, y = synthetic()
    resident = ResidentData(x, y)
    c = cfg()

    def batches(epoch: int):  # numpy, (B, H, W) float16: what a store reader gives
        for xb, yb in resident.epoch_batches(epoch, c.batch_size, c.seed, CPU):
            yield xb[:, 0].half().numpy(), yb.numpy()

    a = train(c, 2, ResidentData(x.half(), y))
    b = train(c, 2, StreamingData(batches, transform=lambda t: t * 1.0))
    assert same(weights(a.generator), weights(b.generator))
    assert same(weights(a.critic), weights(b.critic))


def test_streaming_errors_reach_the_trainer() -> None:
    def broken(epoch: int):
        yield np.zeros((8, H, W), np.float32), np.zeros(8, np.int64)
        raise OSError("chunk 3 unreadable")

    t = WGANTrainer(cfg(), N_CLASSES, H, W)
    with pytest.raises(OSError, match="chunk 3 unreadable"):
        t.train_epoch(StreamingData(broken))
    with pytest.raises(ValueError, match="no batches"):
        t.train_epoch(StreamingData(lambda e: []))

    def endless_nan(epoch: int):
        while True:
            yield np.full((8, H, W), np.nan, np.float32), np.zeros(8, np.int64)

    with pytest.raises(NonFiniteLossError):
        t.train_epoch(StreamingData(endless_nan))
    # the prefetch thread was stopped with the epoch, not left reading forever
    assert not [th for th in threading.enumerate() if th.name == "batch-prefetch"]


def test_nan_in_data_raises_before_any_weight_changes() -> None:
    x, y = synthetic()
    t = train(cfg(), 1)
    before = {n: params(getattr(t, n)) for n in ("generator", "critic", "ema_generator")}
    moments = t.opt_d.state_dict()["state"][0]["exp_avg"].clone()
    x[:] = float("nan")
    with pytest.raises(NonFiniteLossError) as err:
        t.train_epoch(ResidentData(x, y))
    msg = str(err.value)
    assert "\n" not in msg and "critic" in msg
    assert "epoch 2" in msg and "generator step 2" in msg and "critic step 7" in msg
    for n, w in before.items():
        assert same(w, params(getattr(t, n))), n
    assert torch.equal(t.opt_d.state_dict()["state"][0]["exp_avg"], moments)
    assert t.weights_finite() and t.epoch == 1


def test_nan_generator_loss_leaves_generator_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    t = WGANTrainer(cfg(), N_CLASSES, H, W)
    g0 = params(t.generator)
    monkeypatch.setattr(trainer_mod, "generator_loss",
                        lambda d_fake: d_fake.float().mean() * float("nan"))
    with pytest.raises(NonFiniteLossError, match="non-finite generator loss .* generator step 1"):
        t.train_epoch(ResidentData(*synthetic()))
    assert t.step == 0 and t.weights_finite()
    assert same(g0, params(t.generator))


def test_gradient_penalty_on_a_linear_critic() -> None:
    """D(x) = w.x has gradient w everywhere: GP = (||w|| - 1)^2."""
    x = torch.randn(4, 1, 4, 4)
    for norm, expected in ((1.0, 0.0), (3.0, 4.0)):
        w = torch.randn(1, 1, 4, 4)
        w = w / w.norm() * norm

        def linear(m: torch.Tensor, _y: torch.Tensor, w: torch.Tensor = w) -> torch.Tensor:
            return (m * w).flatten(1).sum(1)

        gp = gradient_penalty(linear, interpolate(x, torch.zeros_like(x), None), torch.zeros(4))
        assert gp.item() == pytest.approx(expected, abs=1e-5)
        # scaled (fp16 recipe) gives the same penalty
        gp_s = gradient_penalty(linear, x, torch.zeros(4), scale=1024.0)
        assert gp_s.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_paths_run_on_cpu(dtype: str) -> None:
    """The CUDA AMP code paths (bf16 autocast; fp16 + GradScaler) exercised on the CPU."""
    t = train(cfg(amp=True, amp_dtype=dtype, n_critic=2), 2)
    assert t.weights_finite() and t.step == 6
    assert t.scaler.is_enabled() == (dtype == "fp16")
    state = t.state_dict()
    if dtype == "fp16":
        assert state["scaler"]["scale"] > 0


def test_fp16_nan_data_raises_after_the_scaler_gives_up() -> None:
    x, y = synthetic(64)
    x[:] = float("nan")
    t = WGANTrainer(cfg(amp=True, amp_dtype="fp16", batch_size=2), N_CLASSES, H, W)
    d0 = params(t.critic)
    with pytest.raises(NonFiniteLossError, match="fp16 steps in a row"):
        t.train_epoch(ResidentData(x, y))
    assert same(d0, params(t.critic))


def test_config_round_trip_and_validation() -> None:
    c = cfg(betas=[0.0, 0.99], epochs=3)
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d
    back = TrainConfig.from_dict({**d, "unknown_future_key": 1})
    assert back == c and back.betas == (0.0, 0.99)
    for bad in ({"preset": "huge"}, {"batch_size": 0}, {"ema_decay": 1.0}, {"lr": -1.0},
                {"amp_dtype": "fp8"}):
        with pytest.raises(ValueError) as err:
            cfg(**bad)
        assert "\n" not in str(err.value)


def test_in_process_resume_is_exact() -> None:
    straight = train(cfg(), 3)
    first = train(cfg(), 2)
    state = first.state_dict()
    torch.manual_seed(999)  # disturb global RNG: the state must restore it
    resumed = WGANTrainer(cfg(), N_CLASSES, H, W)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.step) == (2, first.step)
    resumed.train_epoch(ResidentData(*synthetic()))
    for net in ("generator", "critic", "ema_generator"):
        assert same(weights(getattr(straight, net)), weights(getattr(resumed, net))), net
    other = WGANTrainer(cfg(preset="small"), N_CLASSES, H, W)
    with pytest.raises(ValueError, match="preset 'tiny'"):
        other.load_state_dict(state)


def test_warm_start_skips_mismatched_tensors() -> None:
    src = train(cfg(), 1)
    t = WGANTrainer(cfg(), N_CLASSES + 1, H, W)  # a class was added to the store
    skipped = t.warm_start(src.state_dict())
    assert "generator.embed.weight" in skipped and "critic.embed.weight" in skipped
    assert torch.equal(t.generator.net[0].weight, src.generator.net[0].weight)
    assert t.epoch == 0 and t.step == 0
