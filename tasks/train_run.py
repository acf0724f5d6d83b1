"""The training run's sequence of tasks: blocks of epochs, each ending in a checkpoint, with
renders at the seed's cadence, on one process or on several ranks.

Not a task itself: it is what the `train` flow calls to order its tasks (a plain function,
so the flow stays wiring). One process: `train_block` runs in this process on its trainer.
Several (`nproc > 1`): each block is `train_block_parallel`, which hands a checkpoint file to
`torchrun`'s ranks and gets the next one back; this process loads it into its own trainer
only to render, export and register.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan.trainer import TimeBudget, WGANTrainer
from storage.checkpoints import load_checkpoint, save_checkpoint
from tasks.tracking import MetricBatcher
from tasks.train import (
    LOSS_KEYS,
    Start,
    TrainingData,
    block_end,
    next_render_epoch,
    render_epoch_task,
    train_block_task,
)
from tasks.train_parallel import train_block_parallel

WARM_START_DIR = ".warm-start"  # the warm-started weights handed to the ranks


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


def train_blocks(trainer: WGANTrainer, data: TrainingData, start: Start, meta: dict[str, Any],
                 plan: RunPlan, metrics: MetricBatcher | None, run_id: str | None,
                 progress_id: str | None) -> dict[str, Any]:
    """Train to `plan.epochs` (or until the time budget is spent), rendering every
    `sample_every` epochs and at the end. Returns blocks, history, samples, stopped."""
    budget = TimeBudget(plan.max_minutes * 60.0) if plan.max_minutes else None
    blocks: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    samples: dict[str, Any] | None = None
    stopped = False
    ranks = _RankSpec(trainer, data, start, meta, plan) if plan.nproc > 1 else None
    while trainer.epoch < plan.epochs and not stopped:
        stop_at = next_render_epoch(trainer.epoch, plan.sample_every)
        if ranks is None:
            block = train_block_task(trainer, data, plan.epochs, plan.checkpoint_dir, meta,
                                     metrics, progress_id, plan.show_progress,
                                     stop_at=stop_at, budget=budget)
        else:
            block = ranks.block(block_end(trainer.epoch, plan.epochs,
                                          trainer.cfg.checkpoint_every, stop_at), budget)
            trainer.load_state_dict(load_checkpoint(block["checkpoint"]))
            _log_epochs(metrics, block["history"])
        blocks.append(block)
        history.extend(block["history"])
        stopped = bool(block["stopped"])
        due = (trainer.epoch % plan.sample_every == 0 or trainer.epoch >= plan.epochs
               or stopped)
        if plan.render and due:
            samples = render_epoch_task(trainer, data, plan.samples_dir, history, run_id,
                                        plan.render_per_class, plan.griffin_lim_iters)
    return {"blocks": blocks, "history": history, "samples": samples, "stopped": stopped}


def _log_epochs(metrics: MetricBatcher | None, history: list[dict[str, Any]]) -> None:
    """The ranks' per-epoch figures into the MLflow run (per-step ones stay on the ranks)."""
    if metrics is None:
        return
    for h in history:
        metrics.log({**{f"epoch_{k}": h[k] for k in LOSS_KEYS},
                     "epoch_samples_per_s": h["samples_per_s"],
                     "epoch_seconds": h["seconds"], "epoch": h["epoch"]}, step=int(h["epoch"]))
    metrics.flush()


class _RankSpec:
    """The JSON spec every block hands to the ranks, and the checkpoint they start from."""

    def __init__(self, trainer: WGANTrainer, data: TrainingData, start: Start,
                 meta: dict[str, Any], plan: RunPlan) -> None:
        self.nproc = plan.nproc
        self.spec = {"store": data.store, "config": trainer.cfg.to_dict(),
                     "checkpoint_dir": plan.checkpoint_dir, "meta": meta,
                     "epochs": plan.epochs, "memory_budget_mb": plan.memory_budget_mb,
                     "cpu_threads": plan.cpu_threads, "echo": plan.show_progress}
        self.start: str | None = None
        if start.mode == "resume":
            self.start = start.checkpoint
        elif start.mode == "warm-start":  # weights only this process holds: a file for them
            self.start = str(save_checkpoint(Path(plan.checkpoint_dir) / WARM_START_DIR,
                                             trainer.state_dict(), trainer.epoch,
                                             keep_last=1, meta=meta))

    def block(self, until: int, budget: TimeBudget | None) -> dict[str, Any]:
        left = None if budget is None else max(budget.seconds - budget.spent(), 1e-3)
        out = train_block_parallel(self.nproc, {**self.spec, "until": until, "budget_s": left},
                                   self.start)
        self.start = out["checkpoint"]
        return out
