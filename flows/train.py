"""The `train` flow: store -> WGAN-GP epochs with checkpoints -> EMA bundle -> MLflow model.

Wiring only: the tasks in `tasks/train_data.py`, `tasks/train.py` and `tasks/tracking.py`
do the work. `epochs` is the total to reach, so `epochs=2, resume=True` after a 1-epoch run
trains one more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flows.defaults import CHECKPOINT_DIR, DEFAULT_PRESET, EXPERIMENT, MODEL_NAME, STORE
from gan.models import get_preset
from gan.trainer import TrainConfig
from tasks import tracking
from tasks.train import (
    RunPlan,
    block_spec,
    checkpoint_meta,
    export_bundle_task,
    plan_start_task,
    register_model_task,
    set_cpu_threads,
    train_blocks,
)
from tasks.train_data import TrainingError, forget_training_data, load_data_task


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
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "parameters"
        got = f" (got {err['input']!r})" if "input" in err and loc != "parameters" else ""
        raise TrainingError(f"invalid {loc}: {err.get('msg', 'bad value')}{got}") from None


@flow(name="train", validate_parameters=False, flow_run_name="train-{preset}-to-{epochs}")
def train(store: str = STORE, preset: str = DEFAULT_PRESET, epochs: int = 100,
          batch_size: int = 64,
          seed: int = 0, checkpoint_dir: str = CHECKPOINT_DIR, resume: bool = False,
          warm_start: bool = False, model_name: str = MODEL_NAME, experiment: str = EXPERIMENT,
          register: bool = True, memory_budget_mb: int = 2048, device: str = "auto",
          checkpoint_every: int = 10, keep_last: int = 3, sample_every: int = 20,
          lr: float = 1e-4, n_critic: int = 5, gp_weight: float = 10.0,
          ema_decay: float = 0.999, amp: bool | None = None, bundle_dir: str | None = None,
          show_progress: bool = False, samples_dir: str | None = None, render: bool = True,
          render_per_class: int = 4, griffin_lim_iters: int = 32,
          cpu_threads: int = 1, max_minutes: float | None = None,
          nproc: int = 1, block_retries: int = 0) -> dict[str, Any]:
    """Train (or resume) to `epochs`, register the EMA generator; return a summary dict.

    Every `sample_every` epochs and at the end, the fixed latent grid is rendered with the EMA
    generator into `samples_dir` (default: `samples/` beside the checkpoint folder, as in the
    seed's layout) and logged to the MLflow run; `render=False` turns rendering off.
    `cpu_threads` is torch's intra-op thread count when training on the CPU (0: torch's
    default). One thread is the default because these small convolutions gain little from
    a second OpenMP thread and lose up to 4x when the cores are shared (BENCHMARKS.md).
    `max_minutes` stops training at the first epoch boundary after that many minutes of
    training (wall clock, data loading excluded); the run then checkpoints, renders and
    registers as usual. `nproc` > 1 trains each block on that many ranks launched with
    `torchrun --standalone` (DDP: NCCL and one GPU per rank on CUDA, gloo on the CPU); the
    effective batch is nproc x batch_size. Blocks hand each other checkpoint files (path +
    SHA-256); `block_retries` runs a block that failed for a transient reason again from
    its input checkpoint, which ends where a first try would have.
    """
    p = validate_params(dict(locals()))
    cfg = p.train_config()
    set_cpu_threads(cfg.device, p.cpu_threads)
    try:
        return _train(p, cfg)
    finally:
        forget_training_data()  # the blocks' data, and the store lease it holds


def _train(p: TrainParams, cfg: TrainConfig) -> dict[str, Any]:
    data = load_data_task(p.store, p.batch_size, p.seed, p.memory_budget_mb)
    start = plan_start_task(cfg, p.store, p.memory_budget_mb, p.checkpoint_dir, p.resume,
                            p.warm_start)
    meta = checkpoint_meta(data, cfg)
    run_id = tracking.start_run_task(
        p.experiment,
        params={**cfg.to_dict(), "store": data["store"], "rows": data["rows"],
                "classes": ",".join(data["classes"]), "resident": data["resident"],
                "start_mode": start.mode, "start_epoch": start.epoch, "mel": data["mel"]},
        tags={"store_fingerprint": data["fingerprint"], "preset": cfg.preset,
              "start_mode": start.mode, "resumed_from": start.checkpoint or "",
              "device": start.device})
    monitor = tracking.start_system_metrics(run_id)
    try:
        plan = p.run_plan()
        spec = block_spec(cfg, p.store, meta, plan, run_id)
        with tracking.MetricBatcher(run_id) as metrics:
            run = train_blocks(spec, start, plan, metrics)
        blocks, samples, stopped = run["blocks"], run["samples"], run["stopped"]
        if not blocks:  # already at the target: keep the latest checkpoint as the result
            ck = start.weights["path"] if start.weights else start.checkpoint
            blocks.append({"checkpoint": ck, "epoch": start.epoch,
                           "step": start.step, "history": [], "last": {}})
        bundle = export_bundle_task(blocks[-1]["checkpoint"],
                                    p.bundle_dir or str(Path(p.checkpoint_dir) / "bundle"),
                                    {"mlflow_run_id": run_id})
        last = blocks[-1]
        epoch, step = int(last["epoch"]), int(last["step"])
        model = None
        if p.register_model:
            model = register_model_task(bundle, run_id, p.model_name, {
                "store_fingerprint": data["fingerprint"], "preset": cfg.preset,
                "epochs": epoch, "steps": step})
    except BaseException:
        tracking.end_run(run_id, "FAILED")
        raise
    finally:
        if monitor is not None:
            monitor.finish()
    tracking.end_run(run_id, "FINISHED")
    return {
        "run_id": run_id,
        "model": model,
        "model_version": model["version"] if model else None,
        "alias": model["decision"] if model else None,
        "epoch": epoch,
        "step": step,
        "epochs_trained": epoch - start.epoch,
        "stopped_by_time": stopped,
        "start": {"mode": start.mode, "checkpoint": start.checkpoint, "epoch": start.epoch,
                  "skipped": start.skipped},
        "final": {k: last["last"].get(k) for k in ("critic_loss", "generator_loss",
                                                    "gradient_penalty", "wasserstein",
                                                    "samples_per_s")},
        "checkpoint": last["checkpoint"],
        "bundle": bundle,
        "device": start.device,
        "resident": data["resident"],
        "fingerprint": data["fingerprint"],
        "samples": samples,
        "samples_dir": samples["samples_dir"] if samples else None,
        "gallery": samples["gallery"] if samples else None,
    }
