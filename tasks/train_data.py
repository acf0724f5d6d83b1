"""Prefect task and helpers of the training data: the store's normalised rows (resident or
streamed), the real clips renders compare with, and what checkpoints record of the data.

Read once per process and store content (`training_data`): every block of a run and its
renders ask for the same data. A bad store raises `gan.errors.TrainingError`, the one-line
error training raises (as do a bad checkpoint or a NaN loss in `tasks.train`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from gan.classifier import split_by_source
from gan.data import ResidentData, StreamingData, TrainData
from gan.errors import TrainingError, first_line
from gan.spectral import MelConfig, Normaliser
from gan.trainer import TrainConfig
from storage.mel_store import MelStore, StoreError

FIT_PART = 0  # `split_by_source`'s training part (storage.classifier_cache.FIT)
REAL_PER_CLASS = 2  # real clips per class in each render's gallery


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
        raise TrainingError(f"cannot open store {store}: {first_line(exc)}") from None
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
        raise TrainingError(f"cannot open store {store}: {first_line(exc)}") from None
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
    """`summarise` of the store's training data (read here once for the run's blocks),
    after its chunks were checked against their checksums (once per committed state:
    `MelStore.verify_once`)."""
    try:
        with MelStore.open(store) as ms:
            ms.verify_once()
    except (StoreError, FileNotFoundError) as exc:
        raise TrainingError(f"cannot train on store {store}: {first_line(exc)}") from None
    return summarise(training_data(store, batch_size, seed, memory_budget_mb))


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


load_data_task = task(describe_training_data, name="load-training-data", cache_policy=NO_CACHE)
