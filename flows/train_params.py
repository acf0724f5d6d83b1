"""The train flow's parameters, declared once (`TrainParams`): the flow takes them, the CLI's
options are checked against them and `TrainConfig` is derived from them.

Importable without torch, MLflow or the tasks, so the CLI checks a training knob at once,
before demo data and precompute take minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flows.defaults import CHECKPOINT_DIR, DEFAULT_PRESET, EXPERIMENT, MODEL_NAME, STORE
from gan.errors import TrainingError, invalid_parameter
from gan.presets import get_preset

if TYPE_CHECKING:
    from gan.trainer import TrainConfig
    from tasks.train import RunPlan


class TrainParams(BaseModel):
    """The flow's parameters, checked before anything runs (a bad one -> one line)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    store: str = Field(STORE, min_length=1)
    preset: str = DEFAULT_PRESET
    epochs: int = Field(100, ge=1, le=1_000_000)
    # stop at the first epoch boundary after this many minutes of training (None: no limit)
    max_minutes: float | None = Field(None, gt=0, le=1_000_000)
    # ranks of a data-parallel run under torchrun (1: this process alone)
    nproc: int = Field(1, ge=1, le=64)
    # launch more ranks than the machine has CUDA devices (or CPU cores) all the same
    force_nproc: bool = False
    batch_size: int = Field(64, ge=1, le=65536)
    seed: int = Field(0, ge=0, lt=2**63)
    checkpoint_dir: str = Field(CHECKPOINT_DIR, min_length=1)
    resume: bool = False
    warm_start: bool = False
    model_name: str = Field(MODEL_NAME, min_length=1, pattern=r"^[A-Za-z0-9][\w.\-]*$")
    experiment: str = Field(EXPERIMENT, min_length=1)
    # `register` would shadow BaseModel.register; the flow parameter keeps the short name
    register_model: bool = Field(True, alias="register")
    memory_budget_mb: int = Field(2048, ge=0)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    checkpoint_every: int = Field(10, ge=1)
    keep_last: int = Field(3, ge=1)
    sample_every: int = Field(20, ge=1)
    lr: float = Field(1e-4, gt=0, lt=1)
    n_critic: int = Field(5, ge=1)
    gp_weight: float = Field(10.0, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    amp: bool | None = None
    bundle_dir: str | None = None
    show_progress: bool = False
    samples_dir: str | None = None
    render: bool = True
    cpu_threads: int = Field(1, ge=0, le=1024)
    # times a failed block is run again from its input checkpoint (not for a bad store,
    # a non-finite loss or a damaged checkpoint, which a retry would repeat)
    block_retries: int = Field(0, ge=0, le=10)
    render_per_class: int = Field(4, ge=1, le=64)
    griffin_lim_iters: int = Field(32, ge=1, le=1000)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        get_preset(v)  # ValueError names the known ones
        return v

    def run_plan(self) -> RunPlan:
        from tasks.train import RunPlan

        return RunPlan(
            epochs=self.epochs, checkpoint_dir=self.checkpoint_dir,
            sample_every=self.sample_every,
            samples_dir=self.samples_dir or str(Path(self.checkpoint_dir).parent / "samples"),
            render=self.render, render_per_class=self.render_per_class,
            griffin_lim_iters=self.griffin_lim_iters, show_progress=self.show_progress,
            max_minutes=self.max_minutes, nproc=self.nproc,
            memory_budget_mb=self.memory_budget_mb, cpu_threads=self.cpu_threads,
            block_retries=self.block_retries)

    def train_config(self) -> TrainConfig:
        from gan.trainer import TrainConfig

        return TrainConfig(
            preset=self.preset, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            n_critic=self.n_critic, gp_weight=self.gp_weight, ema_decay=self.ema_decay,
            seed=self.seed, amp=self.amp, device=self.device,
            checkpoint_every=self.checkpoint_every, keep_last=self.keep_last,
            sample_every=self.sample_every)


def validate_params(values: dict[str, Any]) -> TrainParams:
    """TrainParams or a one-line TrainingError naming the first bad parameter."""
    try:
        return TrainParams(**values)
    except ValidationError as exc:
        raise TrainingError(invalid_parameter(exc)) from None
