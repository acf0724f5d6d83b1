"""Offline quality of a generator against its mel store, with the ceilings beside it.

Three sets of examples are scored the same way (`gan.metrics.score_set`) by the store's
cached classifier (`storage.classifier_cache`):

- gen:  n_per_class generated examples per class (seeded noise);
- real: held-out real rows (the PROBE part of the split by source file), up to n_per_class
        per class: the ceiling a perfect generator could reach;
- gl:   the same real rows through mel -> Griffin-Lim -> mel: the ceiling after the audio
        round trip that every rendered clip goes through.

The Fréchet reference is the other held-out part (REF), so none of the three is compared with
itself; NDB bins and the diversity normaliser come from the classifier's training part (FIT).
Keys: gen_accuracy, gen_accuracy/<class>, inception_score, frechet_distance, ndb_k, diversity,
and the same with real_ and gl_ prefixes (real_accuracy, real_frechet_distance, ...).
Lower is better for frechet_distance and ndb_k; higher for accuracy and inception_score;
diversity should be near 1 (mode collapse drives it to 0).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from gan.classifier import ClassifierConfig, predict
from gan.metrics import QualityReference, mel_features, score_set
from gan.sampling import make_noise, sample_db
from gan.spectral import DB_FLOOR_DB, LogMel, MelInverter
from report.progress import report
from storage.classifier_cache import (
    FIT,
    PROBE,
    REF,
    StoreClassifier,
    load_or_train_classifier,
    normalised_rows,
)
from storage.mel_store import MelStore
from storage.model_bundle import GeneratorBundle

PROMOTION_METRIC = "frechet_distance"  # lower is better
CUTTING_POLICIES = ("long_clip_policy", "split_hop_frames", "tail_policy", "pad_policy")
DEFAULT_N_PER_CLASS = 32
DEFAULT_SEED = 20240


class EvaluationError(ValueError):
    """The model and the store do not fit together; one line."""


def metric_key(name: str) -> str:
    """A class name as part of an MLflow metric key (letters, digits, _ - . / space)."""
    return re.sub(r"[^\w.\- ]", "_", name, flags=re.ASCII) or "_"


def _check_compatible(bundle: GeneratorBundle, store: MelStore) -> list[int]:
    """Store label of each of the bundle's classes; refuses mel configs whose rows differ.

    How clips were cut into examples (the policies) does not change what a row means, so a
    model trained on a store with other policies is still scored against this one.
    """
    mine, theirs = bundle.mel.to_dict(), store.mel_config.to_dict()
    diff = sorted(k for k, v in mine.items() if k not in CUTTING_POLICIES and theirs.get(k) != v)
    if diff:
        raise EvaluationError(f"the model's mel config differs from the store's ({', '.join(diff)}"
                              f"); evaluate against the store it was trained on")
    missing = [c for c in bundle.class_names if c not in store.classes]
    if missing:
        raise EvaluationError(f"classes {missing} of the model are not in store {store.path} "
                              f"(it has {store.classes})")
    return [store.classes.index(c) for c in bundle.class_names]


def _take_per_class(idx: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most n rows per class from idx, chosen reproducibly."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels[idx]):
        rows = idx[labels[idx] == c]
        out.append(rows if len(rows) <= n else np.sort(rng.choice(rows, n, replace=False)))
    return np.sort(np.concatenate(out)) if out else idx[:0]


def griffin_lim_round_trip(db: torch.Tensor, inverter: MelInverter, logmel: LogMel,
                           batch_size: int = 32) -> torch.Tensor:
    """log-mel dB -> audio (Griffin-Lim) -> log-mel dB, batched; same shape as db."""
    out = []
    with torch.no_grad():
        for i in range(0, len(db), batch_size):
            wave = inverter(db[i:i + batch_size])
            mel = logmel(wave)
            frames = db.shape[-1]
            if mel.shape[-1] < frames:  # centred STFT of (frames-1)*hop samples gives frames
                mel = torch.nn.functional.pad(mel, (0, frames - mel.shape[-1]),
                                            value=DB_FLOOR_DB)
            out.append(mel[..., :frames])
    return torch.cat(out) if out else db.clone()


def _flatten(prefix: str, scores: dict[str, Any], class_names: list[str],
             out: dict[str, float]) -> None:
    """gen -> gen_accuracy, inception_score, ...; real -> real_accuracy, real_inception_score."""
    for key, value in scores.items():
        if key == "per_class_accuracy":
            for name, acc in zip(class_names, value, strict=True):
                out[f"{prefix}_accuracy/{metric_key(name)}"] = float(acc)
        elif key == "accuracy" or prefix != "gen":
            out[f"{prefix}_{key}"] = float(value)
        else:
            out[key] = float(value)


def evaluate(bundle: GeneratorBundle, store_path: str | Path,
             n_per_class: int = DEFAULT_N_PER_CLASS, seed: int = DEFAULT_SEED,
             griffin_lim_iters: int = 32, ndb_bins: int = 10,
             classifier: ClassifierConfig | None = None, ceilings: bool = True,
             device: str | torch.device = "cpu") -> dict[str, float]:
    """Plain function behind the `evaluate_bundle` task: a flat dict of float metrics."""
    t0 = time.perf_counter()
    if n_per_class < 2:
        raise EvaluationError("n_per_class must be at least 2")
    store = MelStore.open(store_path)
    store_labels = _check_compatible(bundle, store)
    stages = ["classifier", "reference set", "generated examples", "real examples",
              "Griffin-Lim examples"][:5 if ceilings else 3]

    def stage(k: int) -> None:  # k stages done; the note names the one under way
        report("evaluate", k, len(stages), f"evaluate: {k}/{len(stages)} stages"
               + (f", {stages[k]}" if k < len(stages) else ", done"))

    stage(0)
    judge: StoreClassifier = load_or_train_classifier(store, classifier, device="cpu")
    stage(1)
    labels = store.labels()
    norm = judge.normaliser
    model = judge.model
    n_classes = len(store.classes)

    def embed(x_norm: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        probs, emb = predict(model, x_norm)
        return probs, emb, mel_features(x_norm)

    ref_idx = np.flatnonzero(judge.parts == REF)
    probe_idx = _take_per_class(np.flatnonzero(judge.parts == PROBE), labels, n_per_class, seed)
    fit_idx = _take_per_class(np.flatnonzero(judge.parts == FIT), labels, 200, seed)
    if len(ref_idx) < 2:
        raise EvaluationError(f"store {store.path} has too few source files to hold out a "
                              f"reference set (needs at least 3 files per class)")
    _, ref_emb, _ = embed(normalised_rows(store, ref_idx, norm))
    fit_x = normalised_rows(store, fit_idx, norm)
    reference = QualityReference.build(n_classes, ref_emb, mel_features(fit_x), labels[fit_idx],
                                       k=ndb_bins, seed=seed)
    del fit_x
    stage(2)

    # generated: n_per_class per class of the model, labelled with the store's class index
    gen = bundle.generator.to(device)
    gen_labels = torch.arange(len(bundle.class_names)).repeat_interleave(n_per_class)
    noise = make_noise(len(gen_labels), bundle.noise_dim, seed)
    gen_db = sample_db(gen, bundle.normaliser, gen_labels, noise)
    gen_y = np.asarray(store_labels)[gen_labels.numpy()]
    gen_scores = score_set(*embed(norm.normalise(gen_db)), gen_y, reference)
    out: dict[str, float] = {}
    _flatten("gen", gen_scores, store.classes, out)
    stage(3)

    if ceilings and len(probe_idx):
        probe_db = torch.from_numpy(store.read_rows(probe_idx).astype(np.float32))
        probe_y = labels[probe_idx]
        _flatten("real", score_set(*embed(norm.normalise(probe_db)), probe_y, reference),
                 store.classes, out)
        stage(4)
        cfg = store.mel_config
        gl_db = griffin_lim_round_trip(probe_db, MelInverter(cfg, n_iter=griffin_lim_iters),
                                       LogMel(cfg))
        _flatten("gl", score_set(*embed(norm.normalise(gl_db)), probe_y, reference),
                 store.classes, out)
    stage(len(stages))
    # only the model's classes are meaningful per class for gen
    for name in store.classes:
        if name not in bundle.class_names:
            out.pop(f"gen_accuracy/{metric_key(name)}", None)
    out.update({
        "n_gen": float(len(gen_y)), "n_real": float(len(probe_idx)), "n_ref": float(len(ref_idx)),
        "n_classes": float(n_classes),
        "classifier_heldout_accuracy": float(judge.meta.get("heldout_accuracy", math.nan)),
        "eval_seconds": time.perf_counter() - t0,
    })
    return out


@task(name="evaluate-generator", cache_policy=NO_CACHE)
def evaluate_bundle(bundle: GeneratorBundle, store_path: str | Path,
                    n_per_class: int = DEFAULT_N_PER_CLASS, seed: int = DEFAULT_SEED,
                    griffin_lim_iters: int = 32, ceilings: bool = True) -> dict[str, float]:
    """Prefect task: `evaluate(...)` (the flow logs the dict to MLflow and promotes on
    `PROMOTION_METRIC`)."""
    return evaluate(bundle, store_path, n_per_class=n_per_class, seed=seed,
                    griffin_lim_iters=griffin_lim_iters, ceilings=ceilings)


def format_table(metrics: dict[str, float]) -> str:
    """gen / real / gl side by side, one metric per line; per-class accuracy after."""
    names = ["accuracy", "inception_score", "frechet_distance", "ndb_k", "diversity"]

    def get(prefix: str, name: str) -> str:
        key = (f"{prefix}_{name}" if prefix != "gen" or name.startswith("accuracy")
               else name)
        v = metrics.get(key)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

    lines = [f"{'metric':<28}{'generated':>12}{'real':>12}{'griffin-lim':>12}"]
    for n in names:
        lines.append(f"{n:<28}{get('gen', n):>12}{get('real', n):>12}{get('gl', n):>12}")
    classes = [k.split("/", 1)[1] for k in metrics if k.startswith("gen_accuracy/")]
    for c in classes:
        lines.append(f"{'accuracy/' + c:<28}{get('gen', 'accuracy/' + c):>12}"
                     f"{get('real', 'accuracy/' + c):>12}{get('gl', 'accuracy/' + c):>12}")
    extra = [k for k in ("n_gen", "n_real", "n_ref", "classifier_heldout_accuracy",
                         "eval_seconds") if k in metrics]
    for k in extra:
        lines.append(f"{k:<28}{metrics[k]:>12.4g}")
    return "\n".join(lines)
