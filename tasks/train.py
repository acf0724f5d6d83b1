"""Prefect tasks of the training flow: data, trainer set-up, blocks of epochs, export, register.

Each task call does one job and the numeric work stays in `gan/`; the flow only wires these
together. A training block trains up to `checkpoint_every` epochs and ends with a
checkpoint, so the Prefect UI shows one task run per checkpoint and a crash loses at most
one block.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import Task, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from gan.classifier import split_by_source
from gan.data import ResidentData, StreamingData, TrainData
from gan.spectral import MelConfig, Normaliser
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
from storage.mel_store import MelStore, StoreError
from storage.model_bundle import load_bundle_dir
from tasks import tracking
from tasks.render import render_samples
from tasks.tracking import MetricBatcher

LOSS_KEYS = ("critic_loss", "generator_loss", "gradient_penalty", "wasserstein")
FIT_PART = 0  # `split_by_source`'s training part (storage.classifier_cache.FIT)
REAL_PER_CLASS = 2  # real clips per class in each render's gallery


class TrainingError(ValueError):
    """Training cannot start or go on; one line, printed as is by the CLI."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- data ----------------------------------------------------------------------------------

@dataclass
class TrainingData:
    """The batches the trainer consumes plus what the exported model needs to know."""

    data: TrainData
    classes: list[str]
    mel: MelConfig
    mean: np.ndarray
    std: np.ndarray
    fingerprint: str
    store: str
    rows: int
    resident: bool
    info: dict[str, Any] = field(default_factory=dict)
    # a few real rows per class (dB, labels) that renders show beside the generated clips
    real_examples: tuple[np.ndarray, np.ndarray] | None = None


def resident_bytes(store: MelStore) -> int:
    """Memory the normalised float32 copy of the live rows takes."""
    return int(store.nbytes_live()) * 2


def open_training_data(store: str, batch_size: int, seed: int,
                       memory_budget_mb: int = 2048) -> TrainingData:
    """Normalised data from the store: resident when the float32 copy fits the budget,
    else streamed chunk-wise from Zarr (memory bounded by a few chunks)."""
    try:
        ms = MelStore.open(store)
    except (StoreError, FileNotFoundError) as exc:
        raise TrainingError(f"cannot open store {store}: {_one_line(exc)}") from None
    rows = len(ms)
    if rows == 0:
        raise TrainingError(f"store {store} has no rows; run precompute first")
    if len(ms.classes) < 1:
        raise TrainingError(f"store {store} has no classes")
    mean, std = (np.asarray(a, dtype=np.float32) for a in ms.stats())
    normaliser = Normaliser(torch.from_numpy(mean), torch.from_numpy(std))
    # the files `evaluate` holds out as its real reference are never trained on
    fit_rows = training_rows(ms)
    held_out = rows - len(fit_rows)
    budget = int(memory_budget_mb) * 2**20
    resident = resident_bytes(ms) <= budget
    data: TrainData
    if resident:
        mels, labels = ms.load(max_bytes=budget)
        mels, labels = mels[fit_rows], np.asarray(labels, dtype=np.int64)[fit_rows]
        x = torch.empty((mels.shape[0], 1, mels.shape[1], mels.shape[2]), dtype=torch.float32)
        step = 4096  # normalise in slices: no second full-size temporary
        for i in range(0, mels.shape[0], step):
            x[i:i + step, 0] = normaliser.normalise(torch.from_numpy(mels[i:i + step]))
        del mels
        data = ResidentData(x, torch.from_numpy(labels))
    else:
        if len(fit_rows) < batch_size:
            raise TrainingError(f"store has {len(fit_rows)} training rows, fewer than one "
                                f"batch ({batch_size})")

        def batches(epoch: int) -> Any:
            return ms.iter_batches(batch_size, seed, epoch, rows=fit_rows)

        data = StreamingData(batches, transform=normaliser.normalise,
                             n_batches=len(fit_rows) // batch_size)
    return TrainingData(data=data, classes=list(ms.classes), mel=ms.mel_config, mean=mean,
                        std=std, fingerprint=str(ms.fingerprint),
                        store=ms.location,
                        rows=len(fit_rows), resident=resident,
                        real_examples=real_examples(ms, fit_rows, REAL_PER_CLASS),
                        info={"rows": len(fit_rows), "held_out_rows": held_out,
                              "classes": len(ms.classes),
                              "resident": resident, "bytes_float32": resident_bytes(ms)})


def real_examples(store: MelStore, fit_rows: np.ndarray, per_class: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Up to `per_class` real rows of each class (float32 dB, labels), from the files held out
    of training when there are any: what the generator is to be compared with by ear."""
    labels = store.labels()
    held = np.setdiff1d(np.arange(len(store)), fit_rows)  # `training_rows`' complement
    rng = np.random.default_rng(0)
    pick: list[int] = []
    for c in range(len(store.classes)):
        pool = held[labels[held] == c]
        if not len(pool):
            pool = np.flatnonzero(labels == c)
        pick += sorted(rng.choice(pool, min(per_class, len(pool)), replace=False).tolist())
    idx = np.asarray(pick, dtype=np.int64)
    return store.read_rows(idx).astype(np.float32), labels[idx]


def training_rows(store: MelStore) -> np.ndarray:
    """Live rows the generator trains on: those of the files `gan.classifier.split_by_source`
    puts in the FIT part. The REF and PROBE files are what `evaluate` compares generated
    examples with, so they must stay unseen by the generator."""
    parts = split_by_source(store.row_sources(), store.labels())
    return np.flatnonzero(parts == FIT_PART)


_OPENED: dict[tuple[Any, ...], TrainingData] = {}  # one entry: the run in progress


def training_data(store: str, batch_size: int, seed: int, memory_budget_mb: int = 2048
                  ) -> TrainingData:
    """`open_training_data`, read once per process and store content rather than once per
    task: every block of a run (and its renders) asks for the same data. Keyed by the
    store's fingerprint, so changed content is read afresh; holds one entry."""
    try:
        with MelStore.open(store) as ms:
            fingerprint = str(ms.fingerprint)
    except (StoreError, FileNotFoundError) as exc:
        raise TrainingError(f"cannot open store {store}: {_one_line(exc)}") from None
    key = (store, batch_size, seed, memory_budget_mb, fingerprint)
    if key not in _OPENED:
        forget_training_data()
        _OPENED[key] = open_training_data(store, batch_size, seed, memory_budget_mb)
    return _OPENED[key]


def forget_training_data() -> None:
    """Drop the data `training_data` keeps (and the store lease it holds)."""
    _OPENED.clear()


def summarise(data: TrainingData) -> dict[str, Any]:
    """What the flow and the checkpoints need to know of the data, as plain values."""
    return {"store": data.store, "rows": data.rows, "classes": list(data.classes),
            "resident": data.resident, "mel": data.mel.to_dict(),
            "fingerprint": data.fingerprint, "info": dict(data.info),
            "norm_mean": data.mean.tolist(), "norm_std": data.std.tolist()}


def describe_training_data(store: str, batch_size: int, seed: int,
                           memory_budget_mb: int = 2048) -> dict[str, Any]:
    """`summarise` of the store's training data (read here once for the run's blocks)."""
    return summarise(training_data(store, batch_size, seed, memory_budget_mb))


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
        raise TrainingError(_one_line(exc)) from None
    if loaded is None:
        return trainer, Start("fresh")
    state, path = loaded
    meta = state.get("meta", {})
    try:
        check_fingerprint(meta, data.fingerprint, warm_start)
    except CheckpointError as exc:
        raise TrainingError(f"cannot resume from {path.name}: {_one_line(exc)}") from None
    if meta.get("fingerprint") == data.fingerprint:
        try:
            trainer.load_state_dict(state)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise TrainingError(f"cannot resume from {path.name}: {_one_line(exc)}") from None
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
        raise TrainingError(f"training stopped: {_one_line(exc)}; latest checkpoint "
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
    parallel block get too (`tasks.train_run`), plus `run_id` for MLflow.
    """
    cfg = TrainConfig.from_dict(spec["config"])
    data = block_data(spec, cfg)
    check_same_store(data, spec)
    trainer = new_trainer(cfg, data)
    if start is not None:
        try:
            trainer.load_state_dict(load_checkpoint(start["path"], sha256=start.get("sha256")))
        except (CheckpointError, ValueError, RuntimeError, KeyError) as exc:
            raise TrainingError(f"cannot start the block: {_one_line(exc)}") from None
    budget = TimeBudget(spec["budget_s"]) if spec.get("budget_s") else None
    metrics = MetricBatcher(spec["run_id"]) if spec.get("run_id") else None
    block = train_block(trainer, data, int(spec["epochs"]), spec["checkpoint_dir"],
                        spec["meta"], metrics, bool(spec.get("echo")),
                        on_epoch=lambda stats: fault_point(f"block-epoch{stats.epoch}"),
                        stop_at=int(spec["until"]), budget=budget)
    block["sha256"] = checkpoint_digest(block["checkpoint"])
    return block


def block_data(spec: dict[str, Any], cfg: TrainConfig) -> TrainingData:
    """The (cached) training data a block spec names."""
    return training_data(spec["store"], cfg.batch_size, cfg.seed,
                         int(spec.get("memory_budget_mb", 2048)))


def check_same_store(data: TrainingData, spec: dict[str, Any]) -> None:
    """A block trains on the content the run started with (TrainingError otherwise)."""
    expected = str(spec["meta"]["fingerprint"])
    if data.fingerprint != expected:
        raise TrainingError(f"store {spec['store']} changed during training (fingerprint "
                            f"{expected[:12]} -> {data.fingerprint[:12]}); train again to "
                            f"continue from the latest checkpoint with --warm-start")


def new_trainer(cfg: TrainConfig, data: TrainingData) -> WGANTrainer:
    """A fresh trainer for `data`'s classes and mel shape (a bad config: one line)."""
    try:
        return WGANTrainer(cfg, len(data.classes), data.mel.n_mels, data.mel.frames)
    except ValueError as exc:
        raise TrainingError(_one_line(exc)) from None


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
                                f"{_one_line(exc)}") from None
    real = None if data.real_examples is None else (
        torch.from_numpy(data.real_examples[0]), torch.from_numpy(data.real_examples[1]))
    paths = render_samples.fn(bundle, out_dir=samples_dir, epoch=int(bundle.meta["epoch"]),
                              per_class=per_class, griffin_lim_iters=griffin_lim_iters,
                              history=history, real=real)
    if run_id:
        tracking.log_artifacts(run_id, samples_dir, "samples")
    return paths


# --- export and registration ---------------------------------------------------------------

def export_checkpoint(checkpoint: str, out_dir: str, extra: dict[str, Any] | None = None
                      ) -> str:
    """The checkpoint's EMA generator as a bundle directory (state_dict + model.json)."""
    try:
        return str(export_bundle_from_checkpoint(checkpoint, out_dir, extra))
    except CheckpointError as exc:
        raise TrainingError(_one_line(exc)) from None


def register_model(bundle_dir: str, run_id: str, model_name: str,
                   tags: dict[str, Any]) -> dict[str, Any]:
    """Log the bundle as the run's pyfunc model, register a version, apply the alias rule
    (no evaluation metric yet: first version champion, later ones candidate)."""
    mv = registry.log_generator_model(bundle_dir, run_id, model_name, tags)
    assert mv is not None
    decision = registry.promote(model_name, mv.version)
    return {"model_name": model_name, "version": int(mv.version), **decision}


# --- Prefect task wrappers -----------------------------------------------------------------

load_data_task = task(describe_training_data, name="load-training-data", cache_policy=NO_CACHE)
plan_start_task = task(plan_start, name="prepare-trainer", cache_policy=NO_CACHE)
train_epochs_task = task(train_epochs, name="train-epochs", cache_policy=NO_CACHE,
                         retry_condition_fn=retry_transient)
export_bundle_task = task(export_checkpoint, name="export-bundle", cache_policy=NO_CACHE)
register_model_task = task(register_model, name="register-model", cache_policy=NO_CACHE)
render_epoch_task = task(render_checkpoint, name="render-samples", cache_policy=NO_CACHE)
