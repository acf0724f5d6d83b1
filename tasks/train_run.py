"""The training run's sequence of tasks: blocks of epochs, each from a checkpoint file to
the next, with renders at the seed's cadence, on one process or on several ranks.

Not a task itself: it is what the `train` flow calls to order its tasks (a plain function,
so the flow stays wiring). Every block gets the same JSON-able spec and the checkpoint
(path + SHA-256) the block before it wrote, and returns the next: one process runs it as
`train_epochs` (retried from its input checkpoint when it fails for a transient reason),
several (`nproc > 1`) as `train_block_parallel`, which hands both to `torchrun`'s ranks.
No trainer lives in the flow: renders and the bundle are made from the checkpoints too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gan.trainer import EpochStats, TimeBudget, TrainConfig
from tasks.train import (
    LOSS_KEYS,
    Start,
    block_end,
    next_render_epoch,
    publish_checkpoint,
    render_epoch_task,
    report_epoch,
    train_epochs_task,
)
from tasks.train_parallel import train_block_parallel


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
