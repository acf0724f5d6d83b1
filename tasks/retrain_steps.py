"""The retrain flow's training half: the champion's checkpoint, checkpoint folders, evaluation
of new and champion models, the new model's samples when training rendered none (the steps
before, which decide whether to train at all, are `tasks/retrain_plan.py`).

Registration is the train flow's (`tasks.train.register_version`) and the samples reach the
MLflow run as the train flow's do (`tasks.tracking.log_samples`).

Each function does one job and is usable without Prefect (tests call them directly or with
`.fn()`); the `*_task` wrappers at the bottom are what `flows/retrain.py` wires together.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from gan.errors import first_line
from storage import registry
from storage.atomic_files import atomic_write_bytes
from storage.checkpoints import CheckpointError, list_checkpoints, verify_checkpoint
from storage.model_bundle import GeneratorBundle, load_bundle_dir
from tasks.retrain_plan import FINGERPRINT_TAG, RetrainError

PLAN_FILE = "retrain.json"  # in a retrain checkpoint folder: the target, what it started from
CHECKPOINT_TAG = "checkpoint"




def champion_checkpoint(model_name: str) -> dict[str, Any] | None:
    """The champion's version and, when the retrain flow registered it, its checkpoint."""
    mv = registry.version_by_alias(model_name, registry.CHAMPION)
    if mv is None:
        return None
    path = (mv.tags or {}).get(CHECKPOINT_TAG) or None
    return {"version": int(mv.version), "checkpoint": path,
            "fingerprint": (mv.tags or {}).get(FINGERPRINT_TAG)}


def prepare_checkpoint_dir(root: str | Path, fingerprint: str, epochs: int, force: bool = False,
                           warm_start: bool = False, champion: dict[str, Any] | None = None,
                           stamp: str | None = None) -> dict[str, Any]:
    """The folder this training checkpoints into, and the epoch to train to.

    One folder per store content (`<root>/retrain-<fingerprint>`), so a retrain that crashed
    resumes from its own last checkpoint on the next run, and never from a model of other
    data. `force` gets a fresh folder (a new model, not the old one re-registered). With
    `warm_start` and a champion checkpoint on disk, that checkpoint is copied in first (with
    its hash file): training then starts from the champion's weights and counts `epochs`
    more. The choice is written to `retrain.json` so a resumed run keeps the same target.
    """
    name = f"retrain-{fingerprint[:16]}" + (f"-{stamp}" if force and stamp else "")
    d = (Path(root) / name).resolve()  # absolute: the registry tag must not depend on cwd
    plan_path = d / PLAN_FILE
    if plan_path.is_file() and list_checkpoints(d):
        plan = json.loads(plan_path.read_text())
        return {**plan, "checkpoint_dir": str(d), "resumed": True}
    d.mkdir(parents=True, exist_ok=True)
    plan: dict[str, Any] = {"target_epochs": int(epochs), "start": "fresh", "warm_from": None,
                            "note": "trained from scratch"}
    if warm_start:
        src = Path(champion["checkpoint"]) if champion and champion.get("checkpoint") else None
        if champion is None:
            plan["note"] = "warm start asked, but there is no champion: trained from scratch"
        elif src is None or not src.is_file():
            plan["note"] = (f"warm start asked, but champion v{champion['version']} has no "
                            f"checkpoint on disk: trained from scratch")
        else:
            try:
                verify_checkpoint(src)
            except CheckpointError as exc:
                raise RetrainError(f"cannot warm start from champion v{champion['version']}: "
                                   f"{first_line(exc)}") from None
            for f in (src, src.with_name(src.name + ".sha256")):
                shutil.copy2(f, d / f.name)
            start_epoch = int(src.stem.split("_")[-1])
            plan.update(target_epochs=start_epoch + int(epochs), start="warm-start",
                        warm_from=str(src),
                        note=f"warm start from champion v{champion['version']} "
                             f"({src.name}), {epochs} more epochs")
    atomic_write_bytes(plan_path, json.dumps(plan, indent=2).encode())
    return {**plan, "checkpoint_dir": str(d), "resumed": False}


# --- evaluation ----------------------------------------------------------------------------

def evaluate_model(model: str | GeneratorBundle, store: str, n_per_class: int, seed: int,
                   ceilings: bool = False, metric: str = "frechet_distance") -> dict[str, Any]:
    """Score a bundle directory, a GeneratorBundle or a registry URI on `store`.

    Never raises for a model that cannot be scored (e.g. a champion with another mel
    config): `{"metrics": None, "error": "..."}` lets the promotion rule decide.
    """
    from tasks.evaluate import evaluate  # heavy import (classifier, metrics): only when used

    t0 = time.perf_counter()
    try:
        if isinstance(model, GeneratorBundle):
            bundle = model
        elif Path(model).is_dir():
            bundle = load_bundle_dir(model)
        else:
            bundle = registry.load_bundle(model)
        metrics = evaluate(bundle, store, n_per_class=n_per_class, seed=seed,
                           ceilings=ceilings)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        return {"metrics": None, "value": None, "error": first_line(exc),
                "seconds": round(time.perf_counter() - t0, 2)}
    value = metrics.get(metric)
    value = float(value) if value is not None and math.isfinite(float(value)) else None
    return {"metrics": {k: float(v) for k, v in metrics.items()}, "value": value,
            "error": None if value is not None else f"no finite {metric}",
            "seconds": round(time.perf_counter() - t0, 2)}


def log_eval_metrics(run_id: str, metrics: dict[str, float] | None, prefix: str = "eval_"
                     ) -> int:
    """Evaluation metrics onto the training run (`eval_*`, shown by `audio-wgan models`)."""
    from mlflow.entities import Metric

    if not metrics:
        return 0
    ts = int(time.time() * 1000)
    items = [Metric(f"{prefix}{k}", float(v), ts, 0) for k, v in metrics.items()
             if isinstance(v, int | float) and math.isfinite(float(v))]
    c = registry.client()
    for i in range(0, len(items), 1000):
        c.log_batch(run_id, metrics=items[i:i + 1000])
    return len(items)


# --- samples -------------------------------------------------------------------------------

def render_bundle(bundle_dir: str, out_dir: str, epoch: int, per_class: int) -> dict[str, Any]:
    """The new model's fixed grid as plots, wavs and a gallery (tasks.render; inside a
    Prefect run it also publishes its markdown artifact)."""
    from tasks.render import render_samples

    return render_samples.fn(load_bundle_dir(bundle_dir), out_dir=out_dir, epoch=epoch,
                             per_class=per_class)


# --- Prefect task wrappers -----------------------------------------------------------------

champion_checkpoint_task = task(champion_checkpoint, name="find-champion",
                                cache_policy=NO_CACHE)
prepare_checkpoint_dir_task = task(prepare_checkpoint_dir, name="prepare-checkpoint-dir",
                                   cache_policy=NO_CACHE)
evaluate_model_task = task(evaluate_model, name="evaluate-model", cache_policy=NO_CACHE)
log_eval_metrics_task = task(log_eval_metrics, name="log-eval-metrics", cache_policy=NO_CACHE)
render_bundle_task = task(render_bundle, name="render-samples", cache_policy=NO_CACHE)
