"""The WGAN-GP training loop: one object that owns the nets, optimisers, EMA and RNG.

Follows the seed (gradient penalty 10, 5 critic steps per generator step, Adam 1e-4
with betas (0.5, 0.9)) and the WGAN-GP paper's Algorithm 1: every critic step draws a
fresh real minibatch. Everything random in training (noise, penalty interpolation,
shuffling) comes from generators whose state is in `state_dict()`, so a run resumed from
an epoch-boundary checkpoint is bitwise identical to one that never stopped (on CPU;
on CUDA up to cuDNN's algorithm choice).

On CUDA: autocast in bf16 where supported, else fp16 with a GradScaler; cuDNN autotuning;
the data live on the GPU when they fit (see `gan.data.ResidentData`). On the CPU training
runs in float32 unless `amp=True` is asked for (bf16 autocast).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gan.augment import diff_augment
from gan.data import TrainData
from gan.devices import resolve_device
from gan.distributed import SINGLE, World
from gan.ema import EMA
from gan.losses import critic_loss, generator_loss, gradient_penalty, interpolate
from gan.losses import wasserstein_estimate as w_estimate
from gan.models import PRESETS, build_models, get_preset

STATE_FORMAT = 1
MAX_SKIPPED_STEPS = 30  # fp16: consecutive overflow skips tolerated (scale / 2**30)
RANK_SEED_STRIDE = 0x9E3779B97F4A7C15  # rank r's noise seed: seed + 1 + r * stride


@dataclass
class TrainConfig:
    """Hyper-parameters of a run; `to_dict()` is what goes into checkpoints and MLflow."""

    preset: str = "small"
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    n_critic: int = 5
    gp_weight: float = 10.0
    ema_decay: float = 0.999
    seed: int = 0
    amp: bool | None = None  # None: on for CUDA, off on the CPU
    amp_dtype: str = "auto"  # "auto" (bf16 where supported, else fp16), "bf16", "fp16"
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    checkpoint_every: int = 10
    keep_last: int = 3
    sample_every: int = 20

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        for name in ("batch_size", "n_critic", "checkpoint_every", "keep_last", "sample_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if self.amp_dtype not in ("auto", "bf16", "fp16"):
            raise ValueError(f"amp_dtype must be auto, bf16 or fp16, got {self.amp_dtype!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {self.gp_weight}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Unknown keys are ignored, so checkpoints from newer versions still load."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)


class NonFiniteLossError(RuntimeError):
    """A loss or gradient became NaN/inf; raised before the optimiser step, weights intact."""


@dataclass
class EpochStats:
    epoch: int  # completed epochs after this one (1-based)
    steps: int  # generator steps in this epoch
    critic_loss: float
    generator_loss: float
    gradient_penalty: float
    wasserstein: float
    samples_per_s: float  # real examples through the critic per second
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _EpochMeter:
    """Running sums for one epoch's EpochStats and per-window throughput."""

    def __init__(self) -> None:
        self.t0 = self.t_last = time.perf_counter()
        self.crit_sum = torch.zeros(3, dtype=torch.float64)  # loss, gp, w
        self.g_sum = 0.0
        self.n_crit = self.n_gen = self.n_seen = 0

    def add_critic(self, crit: torch.Tensor, seen: int) -> None:
        self.crit_sum += crit.double().sum(0).cpu()
        self.n_crit += crit.shape[0]
        self.n_seen += seen

    def add_generator(self, loss: float) -> None:
        self.g_sum += loss
        self.n_gen += 1

    def window_rate(self, seen: int) -> float:
        now = time.perf_counter()
        rate = seen / max(now - self.t_last, 1e-9)
        self.t_last = now
        return rate

    def stats(self, epoch: int) -> EpochStats:
        seconds = time.perf_counter() - self.t0
        c = (self.crit_sum / max(self.n_crit, 1)).tolist()
        return EpochStats(epoch=epoch, steps=self.n_gen, critic_loss=c[0],
                          generator_loss=self.g_sum / max(self.n_gen, 1),
                          gradient_penalty=c[1], wasserstein=c[2],
                          samples_per_s=self.n_seen / max(seconds, 1e-9), seconds=seconds)


def _is_finite(x: float) -> bool:
    return math.isfinite(x)


class WGANTrainer:
    """Conditional WGAN-GP trainer; `train_epoch` runs one pass over a `TrainData`.

    Attributes: device, generator, critic, ema_generator (eval mode), epoch (completed
    epochs), step (generator steps), critic_step (critic steps).
    """

    def __init__(self, cfg: TrainConfig, n_classes: int, n_mels: int, frames: int,
                 world: World = SINGLE) -> None:
        self.cfg = cfg
        self.world = world
        self.shape = {"n_classes": int(n_classes), "n_mels": int(n_mels), "frames": int(frames)}
        self.device = resolve_device(world.device(cfg.device))
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True

        preset = get_preset(cfg.preset)
        self.ac_weight = float(preset.ac_weight)
        self.augment = tuple(preset.augment)
        g, d = build_models(n_classes, n_mels, frames, preset)
        self.generator = g.to(self.device)
        self.critic = d.to(self.device)
        # forward passes go through DDP when there are several ranks (gradients averaged);
        # attributes and state dicts are read from the
        # bare modules, so checkpoints never hold "module." keys
        self._g, self._d = self._parallel(self.generator), self._parallel(self.critic)
        self.ema = EMA(self.generator, cfg.ema_decay)
        # foreach Adam: one fused kernel launch per parameter list, deterministic on the CPU
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr,
                                      betas=cfg.betas, foreach=True)
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr,
                                      betas=cfg.betas, foreach=True)

        self.amp = cuda if cfg.amp is None else bool(cfg.amp)
        if cfg.amp_dtype == "fp16":
            self.amp_dtype = torch.float16
        elif cfg.amp_dtype == "bf16" or not cuda or torch.cuda.is_bf16_supported():
            self.amp_dtype = torch.bfloat16
        else:  # pre-Ampere GPUs (T4, V100): fp16 with dynamic loss scaling
            self.amp_dtype = torch.float16
        use_scaler = self.amp and self.amp_dtype == torch.float16
        # a modest initial scale: fewer skipped steps while the scale calibrates
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0**10,
                                           enabled=use_scaler)
        self._skipped = {"critic": 0, "generator": 0}  # consecutive fp16 steps skipped

        # The trainer's own RNG for noise and penalty interpolation, on the training device;
        # each rank draws its own noise (rank 0's stream is the single-process one)
        self.rng = torch.Generator(device=self.device).manual_seed(self._rank_seed())
        self.epoch = 0
        self.step = 0
        self.critic_step = 0

    def _parallel(self, net: torch.nn.Module) -> torch.nn.Module:
        if not self.world.distributed:
            return net
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device] if self.device.type == "cuda" else None
        # BatchNorm in training mode uses batch statistics, so the running buffers never
        # change a step: no broadcast per forward (rank 0's are what checkpoints keep).
        # torch 2.14 renamed the switch (the old name warns); the ranks' buffers are equal
        # at the start, so the new one's sync at init changes nothing
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
                   else {"broadcast_buffers": False})
        return DistributedDataParallel(net, device_ids=ids, gradient_as_bucket_view=True,
                                       **no_sync)

    def _rank_seed(self) -> int:
        return (self.cfg.seed + 1 + self.world.rank * RANK_SEED_STRIDE) % 2**63

    # -- properties ---------------------------------------------------------------------
    @property
    def ema_generator(self) -> torch.nn.Module:
        return self.ema.module

    @property
    def noise_dim(self) -> int:
        return self.generator.noise_dim

    def _autocast(self) -> Any:
        if not self.amp:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.noise_dim, device=self.device, generator=self.rng)

    def _seen(self, x: torch.Tensor) -> torch.Tensor:
        """What the critic is shown of `x`: DiffAugment's transforms when the preset asks
        for them (drawn from the trainer's RNG, so resume stays exact), else `x`."""
        return diff_augment(x, self.augment, self.rng) if self.augment else x

    # -- one step of each network ---------------------------------------------------------
    def _critic_step(self, real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One critic update; returns [loss, gp, wasserstein] (float32, on device)."""
        b = real.shape[0]
        noise = self._noise(b)
        aux_logits = None
        with self._autocast():
            with torch.no_grad():
                fake = self._g(noise, labels)
            real, fake = self._seen(real), self._seen(fake.to(real.dtype))
            # real and fake through the critic in one call (one DDP forward per backward);
            # `split` keeps them apart in batch-coupled layers (minibatch stddev)
            out = self._d(torch.cat([real, fake]), torch.cat([labels, labels]),
                          with_aux=bool(self.ac_weight), split=b)
            scores, logits = out if self.ac_weight else (out, None)
            d_real, d_fake = scores[:b], scores[b:]
            if logits is not None:
                aux_logits = logits[:b]
        interp = interpolate(real, fake, self.rng)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        with self._autocast():
            # the penalty's double backward through the bare critic: its parameter gradients
            # join the DDP forward's in the one backward below, which DDP then averages
            gp = gradient_penalty(self.critic, interp, labels, scale)
        w = w_estimate(d_real, d_fake)
        loss = critic_loss(d_real, d_fake, gp, self.cfg.gp_weight)
        if aux_logits is not None:  # AC-GAN: the critic learns the classes of real rows
            loss = loss + self.ac_weight * F.cross_entropy(aux_logits.float(), labels)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self._optimiser_step("critic", self.opt_d, loss, self.critic)
        self.critic_step += 1
        return torch.stack([loss.detach(), gp.detach(), w.detach()])

    def _generator_step(self, labels: torch.Tensor) -> torch.Tensor:
        """One generator update on fresh noise; the critic's weights get no gradient."""
        g, d = self.generator, self.critic
        noise = self._noise(labels.shape[0])
        d.requires_grad_(False)
        try:
            with self._autocast():
                fake = self._seen(self._g(noise, labels))  # DDP averages G's gradients
                if self.ac_weight:  # AC-GAN: generated rows must be of their class
                    score, logits = d(fake, labels, with_aux=True)
                    loss = (generator_loss(score)
                            + self.ac_weight * F.cross_entropy(logits.float(), labels))
                else:
                    loss = generator_loss(d(fake, labels))
            self.opt_g.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        finally:
            d.requires_grad_(True)
        self._optimiser_step("generator", self.opt_g, loss, self.generator)
        self.ema.update(g)
        self.step += 1
        return loss.detach()

    def _optimiser_step(self, which: str, opt: torch.optim.Optimizer, loss: torch.Tensor,
                        net: torch.nn.Module) -> None:
        """Step `opt` unless the loss or gradients are non-finite.

        float32/bf16: a NaN/inf loss or gradient raises NonFiniteLossError before the step.
        fp16: overflow is expected while the GradScaler calibrates its scale; it skips the
        step and halves the scale. Only a long run of skips (the scale collapsing) raises.
        """
        if not self.scaler.is_enabled():
            self._guard(which, loss, net)
            opt.step()
            return
        before = self.scaler.get_scale()
        self.scaler.step(opt)
        self.scaler.update()
        if self.scaler.get_scale() < before:
            self._skipped[which] += 1
            if self._skipped[which] > MAX_SKIPPED_STEPS:
                self._skipped[which] = 0
                raise NonFiniteLossError(
                    f"non-finite {which} loss/gradients for {MAX_SKIPPED_STEPS + 1} fp16 steps "
                    f"in a row at epoch {self.epoch + 1}, generator step {self.step + 1} "
                    f"(critic step {self.critic_step + 1}); weights left as they were")
        else:
            self._skipped[which] = 0

    def _guard(self, which: str, loss: torch.Tensor, net: torch.nn.Module) -> None:
        """Raise NonFiniteLossError on a NaN/inf loss or gradient (one sync per step)."""
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        vals = torch.cat([loss.detach().float().reshape(1),
                          torch.nn.utils.get_total_norm(grads).float().reshape(1)])
        loss_v, gnorm = vals.tolist()
        if _is_finite(loss_v) and _is_finite(gnorm):
            return
        what, value = ("loss", loss_v) if not _is_finite(loss_v) else ("gradient", gnorm)
        net.zero_grad(set_to_none=True)
        raise NonFiniteLossError(
            f"non-finite {which} {what} ({value}) at epoch {self.epoch + 1}, generator step "
            f"{self.step + 1} (critic step {self.critic_step + 1}); weights left as they were")

    # -- epochs ---------------------------------------------------------------------------
    def train_epoch(self, data: TrainData, on_step: Callable[[dict], None] | None = None
                    ) -> EpochStats:
        """One pass over `data`: a generator step after every n_critic critic steps.

        An epoch too small for n_critic critic steps still ends with one generator step.
        `on_step` is called after each generator step with {step, epoch, critic_loss,
        generator_loss, gradient_penalty, wasserstein, samples_per_s} (critic figures
        averaged over the critic steps since the previous call). Raises
        NonFiniteLossError with the weights as they were before the offending step.
        """
        self.generator.train()
        self.critic.train()
        meter = _EpochMeter()
        window: list[torch.Tensor] = []  # critic [loss, gp, w] since the last generator step
        window_seen = 0
        labels = None
        batches = data.epoch_batches(self.epoch, self.cfg.batch_size, self.cfg.seed,
                                     self.device, self.world)
        try:
            for real, labels in batches:
                window.append(self._critic_step(real, labels))
                window_seen += real.shape[0] * self.world.size  # examples of all ranks
                if len(window) == self.cfg.n_critic:
                    self._close_window(window, window_seen, labels, meter, on_step)
                    window, window_seen = [], 0
        finally:  # stops a streaming source's prefetch thread at once, also on errors
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        if labels is None:
            raise ValueError(f"the data gave no batches for epoch {self.epoch + 1}")
        if window and meter.n_gen == 0:  # too few batches for n_critic: still one G step
            self._close_window(window, window_seen, labels, meter, on_step)
        elif window:  # leftover critic steps count in the epoch's means
            meter.add_critic(torch.stack(window), window_seen)
        self.epoch += 1
        return meter.stats(self.epoch)

    def fit(self, data: TrainData, until_epoch: int,
            on_step: Callable[[dict], None] | None = None,
            on_epoch: Callable[[EpochStats], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> list[EpochStats]:
        """Train whole epochs until `until_epoch`, or until `should_stop()` says so.

        The one training loop (stylegan2-ada's `training_loop` with its `progress_fn` and
        `abort_fn`): `on_step` after each generator step, `on_epoch` after each epoch,
        `should_stop` asked at every epoch boundary, so a stop never splits an epoch and a
        checkpoint taken afterwards resumes exactly. Returns the epochs' statistics.
        """
        history: list[EpochStats] = []
        while self.epoch < until_epoch:
            stats = self.train_epoch(data, on_step=on_step)
            history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
            if should_stop is not None and should_stop():
                break
        return history

    def _close_window(self, window: list[torch.Tensor], seen: int, labels: torch.Tensor,
                      meter: _EpochMeter, on_step: Callable[[dict], None] | None) -> None:
        """A generator step after a window of critic steps, then bookkeeping and on_step."""
        g_loss = float(self._generator_step(labels))
        crit = torch.stack(window)
        meter.add_critic(crit, seen)
        meter.add_generator(g_loss)
        if on_step is not None:
            c = crit.double().mean(0).tolist()
            on_step({"step": self.step, "epoch": self.epoch + 1, "critic_loss": c[0],
                     "generator_loss": g_loss, "gradient_penalty": c[1], "wasserstein": c[2],
                     "samples_per_s": meter.window_rate(seen)})

    # -- state ----------------------------------------------------------------------------
    def weights_finite(self) -> bool:
        """True when every floating tensor of G, D and the EMA generator is finite."""
        for net in (self.generator, self.critic, self.ema_generator):
            for t in net.state_dict().values():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return False
        return True

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly; only types `torch.load(weights_only=True)`
        accepts (tensors, dicts, lists, numbers, strings, bools, None), all on the CPU.

        With several ranks this is a collective (every rank must call it): the RNG states of
        all ranks are gathered, so each can take its own back on resume.
        """
        own_rng = rng_state(self.rng)
        state = {
            "format": STATE_FORMAT,
            "config": self.cfg.to_dict(),
            "shape": dict(self.shape),
            "epoch": self.epoch,
            "step": self.step,
            "critic_step": self.critic_step,
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict(),
            "ema_generator": self.ema.module.state_dict(),
            "ema_updates": self.ema.updates,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": own_rng,
            "world_size": self.world.size,
        }
        if self.world.distributed:
            state["rng_ranks"] = self.world.gather(_to_cpu(own_rng))
        return _to_cpu(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` (the trainer's own config is kept, not the saved one)."""
        self._check_shape(state)
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        self.ema.module.load_state_dict(state["ema_generator"])
        self.ema.updates = int(state["ema_updates"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.critic_step = int(state.get("critic_step", 0))
        ranks = state.get("rng_ranks") or [state["rng"]]
        if int(state.get("world_size", 1)) == self.world.size:  # exact: each rank's own
            set_rng_state(ranks[self.world.rank], self.rng)
        else:  # other world size: weights, optimisers and epoch exact; noise streams anew
            set_rng_state(state["rng"])
            self.rng.manual_seed((self._rank_seed() + self.epoch * RANK_SEED_STRIDE) % 2**63)

    def warm_start(self, state: dict[str, Any]) -> list[str]:
        """Take G, D and EMA weights from a checkpoint but start a fresh run (epoch 0, new
        optimisers). Tensors whose shapes differ (e.g. a new class) are skipped; their
        names are returned."""
        skipped: list[str] = []
        for key, net in (("generator", self.generator), ("critic", self.critic),
                         ("ema_generator", self.ema.module)):
            own = net.state_dict()
            take = {}
            for name, t in state[key].items():
                if name in own and own[name].shape == t.shape:
                    take[name] = t
                else:
                    skipped.append(f"{key}.{name}")
            net.load_state_dict(take, strict=False)
        return skipped

    def _check_shape(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported trainer state format {state.get('format')!r}")
        saved_preset = state.get("config", {}).get("preset")
        if state.get("shape") != self.shape or saved_preset != self.cfg.preset:
            raise ValueError(
                f"checkpoint is for preset {saved_preset!r} with {state.get('shape')}, "
                f"this run is preset {self.cfg.preset!r} with {self.shape}")


class TimeBudget:
    """A training-time limit measured on `clock` from creation (None: no limit).

    `train --max-minutes` uses the wall clock; the quality benchmark gives every variant
    the same budget of process CPU time (`time.process_time`), which other jobs sharing
    the machine cannot shrink.
    """

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"a time budget must be a positive number of seconds, "
                             f"got {seconds}")
        self.seconds, self.clock = seconds, clock
        self.t0 = clock()

    def spent(self) -> float:
        return self.clock() - self.t0

    def exhausted(self) -> bool:
        return self.seconds is not None and self.spent() >= self.seconds


def rng_state(own: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch CPU/CUDA and `own` generator states as weights_only-safe types."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                  "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if own is not None:
        state["own"] = own.get_state()
    return state


def set_rng_state(state: dict[str, Any], own: torch.Generator | None = None) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if own is not None and "own" in state:
        own.set_state(state["own"])


def _to_cpu(obj: Any) -> Any:
    """Detached CPU copies of every tensor in a nested dict/list (checkpoint-ready)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj
