"""The `train` flow: store -> WGAN-GP epochs with checkpoints -> EMA bundle -> MLflow model.

Wiring only: the tasks in `tasks/train_data.py`, `tasks/train.py` and `tasks/tracking.py`
do the work. `epochs` is the total to reach, so `epochs=2, resume=True` after a 1-epoch run
trains one more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.defaults import CHECKPOINT_DIR, DEFAULT_PRESET, EXPERIMENT, MODEL_NAME, STORE
from flows.train_params import TrainParams, validate_params  # noqa: F401  (re-exported)
from gan.devices import nproc_problem
from gan.errors import TrainingError
from gan.trainer import TrainConfig
from storage.checkpoints import checkpoint_folder_lock
from tasks import tracking
from tasks.train import (
    block_spec,
    checkpoint_meta,
    export_bundle_task,
    plan_start_task,
    register_model_task,
    set_cpu_threads,
    train_blocks,
)
from tasks.train_data import forget_training_data, load_data_task


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
          nproc: int = 1, force_nproc: bool = False, block_retries: int = 0
          ) -> dict[str, Any]:
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
    effective batch is nproc x batch_size; more ranks than the machine's CUDA devices (or
    CPU cores) are refused unless `force_nproc`. Blocks hand each other checkpoint files (path +
    SHA-256); `block_retries` runs a block that failed for a transient reason again from
    its input checkpoint, which ends where a first try would have.
    """
    p = validate_params(dict(locals()))
    problem = nproc_problem(p.nproc, p.device, p.force_nproc)
    if problem:
        raise TrainingError(problem)
    cfg = p.train_config()
    set_cpu_threads(cfg.device, p.cpu_threads)
    try:
        return _train(p, cfg)
    finally:
        forget_training_data()  # the blocks' data, and the store lease it holds


def _train(p: TrainParams, cfg: TrainConfig) -> dict[str, Any]:
    data = load_data_task(p.store, p.batch_size, p.seed, p.memory_budget_mb)
    # one run at a time writes a checkpoint folder (held until the flow returns or dies)
    with checkpoint_folder_lock(p.checkpoint_dir):
        return _train_locked(p, cfg, data)


def _train_locked(p: TrainParams, cfg: TrainConfig, data: dict[str, Any]) -> dict[str, Any]:
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
              "device": start.device},
        run_name=tracking.run_name("train", cfg.preset, data["store"]))
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
