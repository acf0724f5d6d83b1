"""Prefect tasks of the training flow: trainer set-up, blocks of epochs (one process or
several ranks), the renders between them, export and registration; and `train_blocks`, the
sequence of those tasks the `train` flow calls.

Each task call does one job and the numeric work stays in `gan/`; the flow only wires these
together. A training block trains up to `checkpoint_every` epochs and ends with a
checkpoint, so the Prefect UI shows one task run per checkpoint and a crash loses at most
one block. The training data's task and cache are `tasks.train_data`'s.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from prefect import Task, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from gan.errors import TrainingError, first_line
from gan.trainer import EpochStats, NonFiniteLossError, TimeBudget, TrainConfig, WGANTrainer
from report.progress import report
from report.run_context import in_prefect_run
from storage import registry
from storage.checkpoints import (
    CheckpointError,
    check_fingerprint,
    checkpoint_digest,
    export_bundle_from_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from storage.fault_points import fault_point
from storage.model_bundle import load_bundle_dir
from tasks import tracking
from tasks.render import render_samples
from tasks.tracking import MetricBatcher
from tasks.train_data import (
    TrainingData,
    block_data,
    check_same_store,
    summarise,
    training_data,
)
from tasks.train_parallel import train_block_parallel

LOSS_KEYS = ("critic_loss", "generator_loss", "gradient_penalty", "wasserstein")


def set_cpu_threads(device: str, threads: int) -> None:
    """Pin torch's intra-op threads for CPU training (0 leaves torch's default)."""
    if threads > 0 and not (device.startswith("cuda") or
                            (device == "auto" and torch.cuda.is_available())):
        torch.set_num_threads(threads)


# --- trainer set-up and resume -------------------------------------------------------------

@dataclass
class Start:
    """How this run begins: fresh, resumed exactly, or warm-started from other weights."""

    mode: str  # "fresh" | "resume" | "warm-start"
    checkpoint: str | None = None  # resumed or warm-started from
    epoch: int = 0
    skipped: list[str] = field(default_factory=list)
    step: int = 0
    # the checkpoint the first block starts from ({"path", "sha256"}; None: fresh weights)
    weights: dict[str, str] | None = None
    device: str = "cpu"


def checkpoint_meta(summary: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """Checkpoint meta from `summarise`'s values: enough to resume, check and export."""
    return {**{k: summary[k] for k in ("fingerprint", "store", "classes", "mel",
                                       "norm_mean", "norm_std")}, "preset": cfg.preset}


def checkpoint_ref(path: str | Path) -> dict[str, str]:
    """A checkpoint as a task hands it on: its path and the SHA-256 its sidecar records."""
    return {"path": str(path), "sha256": checkpoint_digest(path)}


def prepare_trainer(cfg: TrainConfig, data: TrainingData, checkpoint_dir: str, resume: bool,
                    warm_start: bool) -> tuple[WGANTrainer, Start]:
    """Build the trainer and, if asked, continue from the newest checkpoint.

    Same store fingerprint: exact resume (weights, optimisers, RNG, counters). Changed
    store: refused unless `warm_start`, which takes the weights whose shapes still fit
    (fresh optimisers) and keeps counting epochs from the checkpoint.
    """
    trainer = new_trainer(cfg, data)
    existing = list_checkpoints(checkpoint_dir)
    if not (resume or warm_start):
        if existing:
            raise TrainingError(
                f"{checkpoint_dir} already holds checkpoints (latest {existing[-1].name}); "
                f"pass --resume to continue, or use a new --checkpoint-dir")
        return trainer, Start("fresh")
    try:
        loaded = load_latest(checkpoint_dir)
    except CheckpointError as exc:
        raise TrainingError(first_line(exc)) from None
    if loaded is None:
        return trainer, Start("fresh")
    state, path = loaded
    meta = state.get("meta", {})
    try:
        check_fingerprint(meta, data.fingerprint, warm_start)
    except CheckpointError as exc:
        raise TrainingError(f"cannot resume from {path.name}: {first_line(exc)}") from None
    if meta.get("fingerprint") == data.fingerprint:
        try:
            trainer.load_state_dict(state)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise TrainingError(f"cannot resume from {path.name}: {first_line(exc)}") from None
        return trainer, Start("resume", str(path), trainer.epoch)
    skipped = trainer.warm_start(state)
    trainer.epoch, trainer.step = int(state.get("epoch", 0)), int(state.get("step", 0))
    return trainer, Start("warm-start", str(path), trainer.epoch, skipped)


WARM_START_DIR = ".warm-start"  # the warm-started weights the first block starts from


def plan_start(cfg: TrainConfig, store: str, memory_budget_mb: int, checkpoint_dir: str,
               resume: bool, warm_start: bool) -> Start:
    """`prepare_trainer`'s decision as values: how the run starts and the checkpoint its
    first block loads. Warm-started weights (which no checkpoint of this run holds) are
    written to `<checkpoint_dir>/.warm-start/` for it."""
    data = training_data(store, cfg.batch_size, cfg.seed, memory_budget_mb)
    trainer, start = prepare_trainer(cfg, data, checkpoint_dir, resume, warm_start)
    start.step, start.device = trainer.step, str(trainer.device)
    if start.mode == "resume":
        start.weights = checkpoint_ref(str(start.checkpoint))
    elif start.mode == "warm-start":
        folder = Path(checkpoint_dir) / WARM_START_DIR
        shutil.rmtree(folder, ignore_errors=True)  # an older run's: the epoch may be later
        path = save_checkpoint(folder, trainer.state_dict(), trainer.epoch, keep_last=1,
                               meta=checkpoint_meta(summarise(data), cfg))
        start.weights = checkpoint_ref(path)
    return start


# --- progress ------------------------------------------------------------------------------

def report_epoch(stats: EpochStats, epochs: int, echo: bool = False) -> None:
    """One epoch to `report.progress` (the CLI's bar or lines, the run's Prefect progress
    artifact); `echo` prints the line when nothing in this process listens."""
    report("train", stats.epoch, epochs, progress_line(stats, epochs), echo=echo)


def progress_line(stats: EpochStats, epochs: int, width: int = 20) -> str:
    """`epoch  3/10 [######..............] D -1.234 G 0.456 GP 0.012 W 1.50 | 812 samples/s`"""
    done = int(width * stats.epoch / max(epochs, 1))
    bar = "#" * done + "." * (width - done)
    n = len(str(epochs))
    return (f"epoch {stats.epoch:>{n}}/{epochs} [{bar}] D {stats.critic_loss:.3f} "
            f"G {stats.generator_loss:.3f} GP {stats.gradient_penalty:.3f} "
            f"W {stats.wasserstein:.3f} | {stats.samples_per_s:.0f} samples/s "
            f"| {stats.seconds:.1f}s")


# --- a block of epochs ---------------------------------------------------------------------

def block_end(epoch: int, epochs: int, checkpoint_every: int, stop_at: int | None) -> int:
    """Where a block that starts at `epoch` ends: after `checkpoint_every` epochs, at the
    target `epochs`, or at `stop_at` (the next render epoch), whichever comes first."""
    until = min(epochs, epoch + checkpoint_every)
    if stop_at is not None and stop_at > epoch:
        until = min(until, stop_at)
    return until


def train_block(trainer: WGANTrainer, data: TrainingData, epochs: int, checkpoint_dir: str,
                meta: dict[str, Any], metrics: MetricBatcher | None = None,
                echo: bool = False,
                on_epoch: Callable[[EpochStats], None] | None = None,
                stop_at: int | None = None, budget: TimeBudget | None = None
                ) -> dict[str, Any]:
    """Train up to `checkpoint_every` epochs (not past `epochs` or `stop_at`, the next render
    epoch, and not past the first epoch boundary after `budget` is spent), then checkpoint.
    `stopped` in the result says the budget ended it.

    A non-finite loss stops training with a TrainingError naming the step; nothing is
    saved, so the last good checkpoint stays the latest.
    """
    cfg = trainer.cfg
    until = block_end(trainer.epoch, epochs, cfg.checkpoint_every, stop_at)
    on_step = None
    if metrics is not None:
        def on_step(m: dict[str, Any]) -> None:
            metrics.log({k: m[k] for k in (*LOSS_KEYS, "samples_per_s")}, step=int(m["step"]))
    history: list[dict[str, Any]] = []

    def epoch_done(stats: EpochStats) -> None:
        history.append(stats.to_dict())
        if metrics is not None:
            metrics.log({**{f"epoch_{k}": getattr(stats, k) for k in LOSS_KEYS},
                         "epoch_samples_per_s": stats.samples_per_s,
                         "epoch_seconds": stats.seconds, "epoch": stats.epoch},
                        step=stats.epoch)
        report_epoch(stats, epochs, echo)
        if on_epoch is not None:
            on_epoch(stats)

    try:
        trainer.fit(data.data, until, on_step=on_step, on_epoch=epoch_done,
                    should_stop=budget.exhausted if budget is not None else None)
    except NonFiniteLossError as exc:
        if metrics is not None:
            metrics.flush()
        last = list_checkpoints(checkpoint_dir)
        kept = last[-1].name if last else "none"
        raise TrainingError(f"training stopped: {first_line(exc)}; latest checkpoint "
                            f"stays {kept}; nothing registered") from None
    if metrics is not None:
        metrics.flush()
    if not trainer.weights_finite():
        raise TrainingError(f"weights became non-finite by epoch {trainer.epoch}; "
                            f"nothing saved or registered")
    path = save_checkpoint(checkpoint_dir, trainer.state_dict(), trainer.epoch,
                           keep_last=cfg.keep_last, meta=meta)
    last = history[-1] if history else {}
    return {"checkpoint": str(path), "epoch": trainer.epoch, "step": trainer.step,
            "history": history, "last": last,
            "stopped": budget is not None and budget.exhausted()}


def train_epochs(spec: dict[str, Any], start: dict[str, str] | None) -> dict[str, Any]:
    """One block of a run, from files to files: load the checkpoint `start` ({"path",
    "sha256"}; None: fresh weights), train to `spec["until"]`, checkpoint. The result is
    `train_block`'s plus the new checkpoint's sha256, which the next block is handed.

    Nothing lives on between blocks but the data cache, so a retried block starts again
    from its input and ends where a first try would have. `spec` is what the ranks of a
    parallel block get too (`train_blocks`), plus `run_id` for MLflow.
    """
    cfg = TrainConfig.from_dict(spec["config"])
    data = block_data(spec, cfg)
    check_same_store(data, spec)
    trainer = new_trainer(cfg, data)
    if start is not None:
        try:
            trainer.load_state_dict(load_checkpoint(start["path"], sha256=start.get("sha256")))
        except (CheckpointError, ValueError, RuntimeError, KeyError) as exc:
            raise TrainingError(f"cannot start the block: {first_line(exc)}") from None
    budget = TimeBudget(spec["budget_s"]) if spec.get("budget_s") else None
    metrics = MetricBatcher(spec["run_id"]) if spec.get("run_id") else None
    block = train_block(trainer, data, int(spec["epochs"]), spec["checkpoint_dir"],
                        spec["meta"], metrics, bool(spec.get("echo")),
                        on_epoch=lambda stats: fault_point(f"block-epoch{stats.epoch}"),
                        stop_at=int(spec["until"]), budget=budget)
    block["sha256"] = checkpoint_digest(block["checkpoint"])
    return block


def new_trainer(cfg: TrainConfig, data: TrainingData) -> WGANTrainer:
    """A fresh trainer for `data`'s classes and mel shape (a bad config: one line)."""
    try:
        return WGANTrainer(cfg, len(data.classes), data.mel.n_mels, data.mel.frames)
    except ValueError as exc:
        raise TrainingError(first_line(exc)) from None


def retry_transient(task: Task, task_run: Any, state: Any) -> bool:
    """Retry a failed block unless it failed for a reason a retry repeats (TrainingError:
    a bad store, a NaN loss, a damaged checkpoint)."""
    try:
        state.result()
    except TrainingError:
        return False
    except BaseException:  # noqa: BLE001 - anything else may pass on a second try
        return True
    return True


def publish_checkpoint(block: dict[str, Any], run_id: str | None) -> None:
    """List a block's checkpoint where its run is looked at: a Prefect markdown artifact
    (inside a run) and `checkpoints/<name>.json` in the MLflow run (path, SHA-256, epoch,
    step, last losses). The file itself stays in the checkpoint folder."""
    path, last = Path(block["checkpoint"]), block.get("last") or {}
    figures = {k: last[k] for k in (*LOSS_KEYS, "samples_per_s")
               if isinstance(last.get(k), float) and math.isfinite(last[k])}
    if in_prefect_run():
        rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in figures.items())
        create_markdown_artifact(
            f"### Checkpoint, epoch {block['epoch']}\n\n`{path}`\n\nSHA-256 "
            f"`{block['sha256']}`\n\ngenerator steps: {block['step']}\n\n"
            f"| metric | last epoch |\n|---|---|\n{rows}\n",
            key="train-checkpoint", description=f"checkpoint at epoch {block['epoch']}")
    if run_id:
        tracking.log_dict(run_id, {"path": str(path), "sha256": block["sha256"],
                                   "epoch": block["epoch"], "step": block["step"],
                                   "last": figures}, f"checkpoints/{path.name}.json")


# --- samples during training ---------------------------------------------------------------

def next_render_epoch(epoch: int, sample_every: int) -> int:
    """The next multiple of `sample_every` after `epoch` (the seed renders every 20)."""
    return (epoch // sample_every + 1) * sample_every


def render_checkpoint(checkpoint: str, spec: dict[str, Any], samples_dir: str,
                      history: list[dict[str, Any]], run_id: str | None = None,
                      per_class: int = 4, griffin_lim_iters: int = 32) -> dict[str, Any]:
    """`render_epoch` from a checkpoint file: its EMA generator, through the bundle it
    exports (the same weights a registered model serves), beside the store's real clips."""
    data = block_data(spec, TrainConfig.from_dict(spec["config"]))
    with tempfile.TemporaryDirectory(prefix="render-") as tmp:
        try:
            bundle = load_bundle_dir(export_bundle_from_checkpoint(checkpoint, Path(tmp) / "b"))
        except (CheckpointError, ValueError) as exc:
            raise TrainingError(f"cannot render {Path(checkpoint).name}: "
                                f"{first_line(exc)}") from None
    real = None if data.real_examples is None else (
        torch.from_numpy(data.real_examples[0]), torch.from_numpy(data.real_examples[1]))
    paths = render_samples.fn(bundle, out_dir=samples_dir, epoch=int(bundle.meta["epoch"]),
                              per_class=per_class, griffin_lim_iters=griffin_lim_iters,
                              history=history, real=real)
    if run_id:
        tracking.log_samples(run_id, samples_dir)
    return paths


# --- export and registration ---------------------------------------------------------------

def export_checkpoint(checkpoint: str, out_dir: str, extra: dict[str, Any] | None = None
                      ) -> str:
    """The checkpoint's EMA generator as a bundle directory (state_dict + model.json)."""
    try:
        return str(export_bundle_from_checkpoint(checkpoint, out_dir, extra))
    except CheckpointError as exc:
        raise TrainingError(first_line(exc)) from None


def register_version(bundle_dir: str, run_id: str, model_name: str,
                     tags: dict[str, Any]) -> int:
    """Log the bundle as the run's pyfunc model and register a version (no alias yet: the
    retrain flow promotes it after evaluation, `register_model` at once)."""
    mv = registry.log_generator_model(bundle_dir, run_id, model_name, tags)
    if mv is None:
        raise TrainingError(f"{model_name} was logged but not registered")
    return int(mv.version)


def register_model(bundle_dir: str, run_id: str, model_name: str,
                   tags: dict[str, Any]) -> dict[str, Any]:
    """`register_version`, then the alias rule with no evaluation metric (the train flow's:
    the first version becomes champion, later ones candidates)."""
    version = register_version(bundle_dir, run_id, model_name, tags)
    decision = registry.promote(model_name, version)
    return {"model_name": model_name, "version": version, **decision}


# --- the run: blocks in sequence, renders between them --------------------------------------

@dataclass(frozen=True)
class RunPlan:
    """What the blocks need to know of the run's parameters."""

    epochs: int
    checkpoint_dir: str
    sample_every: int
    samples_dir: str
    render: bool = True
    render_per_class: int = 4
    griffin_lim_iters: int = 32
    show_progress: bool = False
    max_minutes: float | None = None
    nproc: int = 1
    memory_budget_mb: int = 2048
    cpu_threads: int = 1
    block_retries: int = 0


def block_spec(cfg: TrainConfig, store: str, meta: dict[str, Any], plan: RunPlan,
               run_id: str | None) -> dict[str, Any]:
    """What every block of the run is handed besides its start checkpoint and end epoch."""
    return {"store": store, "config": cfg.to_dict(), "checkpoint_dir": plan.checkpoint_dir,
            "meta": meta, "epochs": plan.epochs, "memory_budget_mb": plan.memory_budget_mb,
            "cpu_threads": plan.cpu_threads, "echo": plan.show_progress,
            "run_id": run_id}


def train_blocks(spec: dict[str, Any], start: Start, plan: RunPlan,
                 metrics: Any | None = None) -> dict[str, Any]:
    """Train to `plan.epochs` (or until the time budget is spent), rendering every
    `sample_every` epochs and at the end. Returns blocks, history, samples, stopped.
    `metrics` (a `tasks.tracking.MetricBatcher`) takes the ranks' per-epoch figures."""
    cfg = TrainConfig.from_dict(spec["config"])
    budget = TimeBudget(plan.max_minutes * 60.0) if plan.max_minutes else None
    blocks: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    samples: dict[str, Any] | None = None
    stopped = False
    weights, epoch = start.weights, start.epoch
    local = train_epochs_task.with_options(retries=plan.block_retries)
    while epoch < plan.epochs and not stopped:
        until = block_end(epoch, plan.epochs, cfg.checkpoint_every,
                          next_render_epoch(epoch, plan.sample_every))
        left = None if budget is None else max(budget.seconds - budget.spent(), 1e-3)
        block_spec_ = {**spec, "until": until, "budget_s": left}
        if plan.nproc == 1:
            block = local(block_spec_, weights)
        else:
            block = train_block_parallel(plan.nproc, block_spec_, weights)
            _log_epochs(metrics, block["history"])
            for h in block["history"]:  # the ranks print nothing: reported from here
                report_epoch(EpochStats(**h), plan.epochs, plan.show_progress)
        publish_checkpoint(block, spec.get("run_id"))
        blocks.append(block)
        history.extend(block["history"])
        weights = {"path": block["checkpoint"], "sha256": block["sha256"]}
        epoch, stopped = int(block["epoch"]), bool(block["stopped"])
        due = epoch % plan.sample_every == 0 or epoch >= plan.epochs or stopped
        if plan.render and due:
            samples = render_epoch_task(block["checkpoint"], spec, plan.samples_dir, history,
                                        spec.get("run_id"), plan.render_per_class,
                                        plan.griffin_lim_iters)
    return {"blocks": blocks, "history": history, "samples": samples, "stopped": stopped}


def _log_epochs(metrics: Any | None, history: list[dict[str, Any]]) -> None:
    """The ranks' per-epoch figures into the MLflow run (per-step ones stay on the ranks)."""
    if metrics is None:
        return
    for h in history:
        metrics.log({**{f"epoch_{k}": h[k] for k in LOSS_KEYS},
                     "epoch_samples_per_s": h["samples_per_s"],
                     "epoch_seconds": h["seconds"], "epoch": h["epoch"]}, step=int(h["epoch"]))
    metrics.flush()


# --- Prefect task wrappers -----------------------------------------------------------------

plan_start_task = task(plan_start, name="prepare-trainer", cache_policy=NO_CACHE)
train_epochs_task = task(train_epochs, name="train-epochs", cache_policy=NO_CACHE,
                         retry_condition_fn=retry_transient)
export_bundle_task = task(export_checkpoint, name="export-bundle", cache_policy=NO_CACHE)
register_model_task = task(register_model, name="register-model", cache_policy=NO_CACHE)
register_version_task = task(register_version, name="register-version", cache_policy=NO_CACHE)
render_epoch_task = task(render_checkpoint, name="render-samples", cache_policy=NO_CACHE)
