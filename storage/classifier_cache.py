"""The evaluation classifier of a mel store, trained once per store content and cached.

Cached beside the store, never inside it (the store has one writer, precompute), at
`<store parent>/<store name>.classifier/<fingerprint>-<config key>.pt`: a new fingerprint
(rows added, replaced or removed) or a new classifier config trains a new one. The file
holds a state_dict and plain metadata, loaded with `weights_only=True`.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan.classifier import (
    ClassifierConfig,
    MelClassifier,
    predict,
    split_by_source,
    train_classifier,
)
from gan.spectral import Normaliser
from storage.atomic_files import atomic_write
from storage.mel_store import MelStore
from storage.store_location import beside_store

KEEP_FILES = 4  # older cached classifiers (other fingerprints) beyond this are removed
FIT, REF, PROBE = 0, 1, 2  # parts of `split_by_source`


@dataclass
class StoreClassifier:
    """A trained classifier plus the store split it was trained on."""

    model: MelClassifier
    parts: np.ndarray  # per live row: FIT, REF or PROBE
    normaliser: Normaliser  # the store's statistics: classifier inputs are normalised mels
    meta: dict[str, Any]
    path: Path
    cached: bool


def cache_dir(store_path: str | Path) -> Path:
    """Where the classifiers of a store are cached (`storage.store_location.beside_store`)."""
    return beside_store(store_path, "classifier")


def cache_path(store: MelStore, cfg: ClassifierConfig) -> Path:
    return cache_dir(store.path) / f"{store.fingerprint[:24]}-{cfg.key()}.pt"


def normalised_rows(store: MelStore, idx: np.ndarray, normaliser: Normaliser,
                    block: int = 256) -> torch.Tensor:
    """Live rows `idx` as normalised float32 (n, n_mels, frames), read in blocks."""
    out = [normaliser.normalise(torch.from_numpy(store.read_rows(idx[i:i + block]).astype(
        np.float32))) for i in range(0, len(idx), block)]
    if not out:
        return torch.empty((0, *store.row_shape))
    return torch.cat(out)


def _prune(folder: Path, keep: Path) -> None:
    files = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in [f for f in files if f != keep][KEEP_FILES - 1:]:
        try:
            p.unlink()
        except OSError:
            pass


def load_or_train_classifier(store: MelStore, cfg: ClassifierConfig | None = None,
                             device: str | torch.device = "cpu") -> StoreClassifier:
    """The store's classifier from the cache, else trained on the FIT part and cached.

    meta records the held-out (REF + PROBE) accuracy, so a weak judge is visible.
    """
    cfg = cfg or ClassifierConfig()
    if len(store) == 0:
        raise ValueError(f"store {store.path} has no rows to train a classifier on")
    labels = store.labels()
    parts = split_by_source(store.row_sources(), labels)
    normaliser = Normaliser(*store.stats())
    path = cache_path(store, cfg)
    n_classes = len(store.classes)
    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            model = MelClassifier(n_classes, ClassifierConfig.from_dict(payload["meta"]["cfg"]))
            model.load_state_dict(payload["state_dict"])
            return StoreClassifier(model.to(device).eval(), parts, normaliser,
                                   dict(payload["meta"]), path, cached=True)
        except (RuntimeError, KeyError, ValueError, TypeError, EOFError, OSError,
                pickle.UnpicklingError):  # a pickled object: weights_only refused to run it
            pass  # unreadable, foreign or stale: retrain and overwrite

    t0 = time.perf_counter()
    fit_idx = np.flatnonzero(parts == FIT)
    if len(fit_idx) > cfg.max_train_rows:
        rng = np.random.default_rng(cfg.seed)
        fit_idx = np.sort(rng.choice(fit_idx, cfg.max_train_rows, replace=False))
    x = normalised_rows(store, fit_idx, normaliser)
    y = torch.from_numpy(labels[fit_idx])
    model, train_info = train_classifier(x, y, n_classes, cfg, device=device)
    held = np.flatnonzero(parts != FIT)
    held_acc = float("nan")
    if len(held):
        probs, _ = predict(model, normalised_rows(store, held, normaliser))
        held_acc = float((probs.argmax(1) == labels[held]).mean())
    meta = {
        "cfg": cfg.to_dict(),
        "fingerprint": store.fingerprint,
        "classes": list(store.classes),
        "n_fit": int(len(fit_idx)),
        "n_heldout": int(len(held)),
        "train_accuracy": train_info["train_accuracy"],
        "heldout_accuracy": held_acc,
        "train_seconds": time.perf_counter() - t0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: torch.save({"state_dict": state, "meta": meta}, f))
    _prune(path.parent, path)
    return StoreClassifier(model.eval(), parts, normaliser, meta, path, cached=False)
