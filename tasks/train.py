"""Prefect tasks of the training flow: data, trainer set-up, blocks of epochs, export, register.

Each task call does one job and the numeric work stays in `gan/`; the flow only wires these
together. A training block trains up to `checkpoint_every` epochs and ends with a
checkpoint, so the Prefect UI shows one task run per checkpoint and a crash loses at most
one block.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from gan.classifier import split_by_source
from gan.data import ResidentData, StreamingData, TrainData
from gan.spectral import MelConfig, Normaliser
from gan.trainer import EpochStats, NonFiniteLossError, TimeBudget, TrainConfig, WGANTrainer
from storage import registry
from storage.checkpoints import (
    CheckpointError,
    check_fingerprint,
    list_checkpoints,
    load_latest,
    save_checkpoint,
)
from storage.mel_store import MelStore, StoreError
from storage.model_bundle import save_bundle
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
                        store=str(Path(ms.path).resolve()),
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
    checkpoint: str | None = None
    epoch: int = 0
    skipped: list[str] = field(default_factory=list)


def checkpoint_meta(data: TrainingData, cfg: TrainConfig) -> dict[str, Any]:
    return {"fingerprint": data.fingerprint, "store": data.store, "classes": data.classes,
            "mel": data.mel.to_dict(), "preset": cfg.preset,
            "norm_mean": data.mean.tolist(), "norm_std": data.std.tolist()}


def prepare_trainer(cfg: TrainConfig, data: TrainingData, checkpoint_dir: str, resume: bool,
                    warm_start: bool) -> tuple[WGANTrainer, Start]:
    """Build the trainer and, if asked, continue from the newest checkpoint.

    Same store fingerprint: exact resume (weights, optimisers, RNG, counters). Changed
    store: refused unless `warm_start`, which takes the weights whose shapes still fit
    (fresh optimisers) and keeps counting epochs from the checkpoint.
    """
    n_mels, frames = data.mel.n_mels, data.mel.frames
    try:
        trainer = WGANTrainer(cfg, len(data.classes), n_mels, frames)
    except ValueError as exc:
        raise TrainingError(_one_line(exc)) from None
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


# --- progress ------------------------------------------------------------------------------

def start_progress(start_epoch: int, epochs: int) -> str | None:
    """A Prefect progress artifact (percent of the epochs to reach); None outside Prefect."""
    try:
        pid = create_progress_artifact(
            progress=100.0 * start_epoch / max(epochs, 1), key="train-progress",
            description=f"training from epoch {start_epoch} to {epochs}")
    except Exception:  # noqa: BLE001 - no flow run context / API: progress is optional
        return None
    return str(pid)


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
                progress_id: str | None = None, echo: bool = False,
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
        if echo:
            print(progress_line(stats, epochs), file=sys.stdout, flush=True)
        if on_epoch is not None:
            on_epoch(stats)
        if progress_id:
            try:
                update_progress_artifact(progress_id, 100.0 * stats.epoch / max(epochs, 1))
            except Exception:  # noqa: BLE001 - progress display must not stop training
                pass

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
    _checkpoint_artifact(path, trainer, last)
    return {"checkpoint": str(path), "epoch": trainer.epoch, "step": trainer.step,
            "history": history, "last": last,
            "stopped": budget is not None and budget.exhausted()}


def _checkpoint_artifact(path: Path, trainer: WGANTrainer, last: dict[str, Any]) -> None:
    rows = "\n".join(f"| {k} | {last[k]:.4g} |" for k in (*LOSS_KEYS, "samples_per_s")
                     if k in last and isinstance(last[k], float) and math.isfinite(last[k]))
    md = (f"### Checkpoint, epoch {trainer.epoch}\n\n`{path}`\n\n"
          f"generator steps: {trainer.step}\n\n| metric | last epoch |\n|---|---|\n{rows}\n")
    try:
        create_markdown_artifact(md, key="train-checkpoint",
                                 description=f"checkpoint at epoch {trainer.epoch}")
    except Exception:  # noqa: BLE001 - outside a Prefect run there is nowhere to put it
        pass


# --- samples during training ---------------------------------------------------------------

def next_render_epoch(epoch: int, sample_every: int) -> int:
    """The next multiple of `sample_every` after `epoch` (the seed renders every 20)."""
    return (epoch // sample_every + 1) * sample_every


def render_epoch(trainer: WGANTrainer, data: TrainingData, samples_dir: str,
                 history: list[dict[str, Any]], run_id: str | None = None,
                 per_class: int = 4, griffin_lim_iters: int = 32) -> dict[str, Any]:
    """Render the fixed latent grid with the EMA generator, then log the samples folder
    (grid PNG, wavs, loss curve, gallery) to the MLflow run. `render_samples` publishes
    the Prefect markdown artifact itself."""
    paths = render_samples.fn(
        trainer.ema_generator, data.classes, data.mel,
        Normaliser(torch.from_numpy(data.mean), torch.from_numpy(data.std)),
        out_dir=samples_dir, epoch=trainer.epoch, per_class=per_class,
        griffin_lim_iters=griffin_lim_iters, history=history,
        real=None if data.real_examples is None else (
            torch.from_numpy(data.real_examples[0]), torch.from_numpy(data.real_examples[1])))
    if run_id:
        tracking.log_artifacts(run_id, samples_dir, "samples")
    return paths


# --- export and registration ---------------------------------------------------------------

def export_bundle(trainer: WGANTrainer, data: TrainingData, out_dir: str,
                  meta: dict[str, Any] | None = None) -> str:
    """The EMA generator as a bundle directory (state_dict + model.json)."""
    info = {"epoch": trainer.epoch, "step": trainer.step, "fingerprint": data.fingerprint,
            "store": data.store, "train_config": trainer.cfg.to_dict(), **(meta or {})}
    try:
        path = save_bundle(out_dir, trainer.ema_generator.state_dict(), trainer.cfg.preset,
                           data.classes, data.mel, data.mean, data.std, info)
    except ValueError as exc:
        raise TrainingError(_one_line(exc)) from None
    return str(path)


def register_model(bundle_dir: str, run_id: str, model_name: str,
                   tags: dict[str, Any]) -> dict[str, Any]:
    """Log the bundle as the run's pyfunc model, register a version, apply the alias rule
    (no evaluation metric yet: first version champion, later ones candidate)."""
    mv = registry.log_generator_model(bundle_dir, run_id, model_name, tags)
    assert mv is not None
    decision = registry.promote(model_name, mv.version)
    return {"model_name": model_name, "version": int(mv.version), **decision}


# --- Prefect task wrappers -----------------------------------------------------------------

load_data_task = task(open_training_data, name="load-training-data", cache_policy=NO_CACHE)
prepare_trainer_task = task(prepare_trainer, name="prepare-trainer", cache_policy=NO_CACHE)
train_block_task = task(train_block, name="train-epochs", cache_policy=NO_CACHE)
export_bundle_task = task(export_bundle, name="export-bundle", cache_policy=NO_CACHE)
register_model_task = task(register_model, name="register-model", cache_policy=NO_CACHE)
render_epoch_task = task(render_epoch, name="render-samples", cache_policy=NO_CACHE)
