"""The `retrain` flow: precompute -> (new data?) train -> render -> evaluate -> register ->
promote. Scheduled weekly by prefect.yaml; `audio-wgan run` calls it with the demo defaults.

Wiring only; the steps live in `tasks/retrain_plan.py` (up to the train-or-skip decision,
light), `tasks/retrain_steps.py` and `tasks/promote.py` (imported only when training), and the
`precompute` and `train` flows run as subflows. Idempotent: a store whose exact content some
registered version was trained on is skipped in seconds (unless `force`), so re-running on
the same data never registers a second version. A retrain that crashed mid-training resumes
from its last checkpoint on the next run (one checkpoint folder per store content).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.defaults import (
    CHECKPOINT_DIR,
    DEMO_CLIPS_PER_CLASS,
    DEMO_DATA_DIR,
    DEMO_MEL,
    DEMO_PRESET,
    EXPERIMENT,
    MODEL_NAME,
    SAMPLES_DIR,
    STORE,
)
from flows.precompute import precompute
from storage.promotion_rule import lower_is_better_for
from tasks.retrain_plan import (
    FINGERPRINT_TAG,
    RetrainError,
    ensure_demo_data_task,
    mel_for,
    plan_training_task,
)

# The demo store (200 clips -> 400 rows of 64x64) costs ~2 CPU-s per `small` epoch: minutes.
DEMO_EPOCHS = 100
PROMOTION_METRIC = "frechet_distance"


def _check(epochs: int, margin: float, demo_clips_per_class: int, eval_per_class: int,
           render_per_class: int) -> None:
    """Bad parameters fail before any work, with one line."""
    if epochs < 1:
        raise RetrainError(f"epochs must be at least 1 (got {epochs})")
    if margin < 0:
        raise RetrainError(f"margin must be >= 0 (got {margin})")
    if demo_clips_per_class < 1:
        raise RetrainError(f"demo_clips_per_class must be at least 1 (got {demo_clips_per_class})")
    if eval_per_class < 2:
        raise RetrainError(f"eval_per_class must be at least 2 (got {eval_per_class})")
    if render_per_class < 1:
        raise RetrainError(f"render_per_class must be at least 1 (got {render_per_class})")


@flow(name="retrain", flow_run_name="retrain-{preset}")
def retrain(data_dir: str = DEMO_DATA_DIR, store: str = STORE, preset: str = DEMO_PRESET,
            epochs: int = DEMO_EPOCHS, model_name: str = MODEL_NAME,
            experiment: str = EXPERIMENT, force: bool = False, warm_start: bool = False,
            metric: str = PROMOTION_METRIC, lower_is_better: bool | None = None,
            margin: float = 0.0, mel: dict[str, Any] | None = None, demo: bool | None = None,
            demo_clips_per_class: int = DEMO_CLIPS_PER_CLASS, batch_size: int = 64,
            seed: int = 0, checkpoint_dir: str = CHECKPOINT_DIR, checkpoint_every: int = 10,
            sample_every: int = 20, samples_dir: str = SAMPLES_DIR, render_per_class: int = 4,
            eval_per_class: int = 32, eval_seed: int = 20240, eval_ceilings: bool = False,
            device: str = "auto", precompute_workers: int | None = None,
            show_progress: bool = False) -> dict[str, Any]:
    """Bring the registered model up to date with the data in `data_dir`.

    Trains only when the store's content is new to the registry (or `force`); from scratch,
    or with `warm_start` from the champion's last checkpoint plus `epochs` more. The new
    version takes `@champion` only when its `metric` (scored on this store, as is the
    champion's) is better by more than `margin`; otherwise it becomes `@candidate`.
    Returns a summary; `skipped: True` with the reason when there was nothing to do.
    `show_progress` prints one line per epoch (for the CLI's `audio-wgan run`).
    """
    _check(epochs, margin, demo_clips_per_class, eval_per_class, render_per_class)
    log = get_run_logger()
    lower = lower_is_better if lower_is_better is not None else lower_is_better_for(metric)

    demo_info = ensure_demo_data_task(data_dir, demo_clips_per_class, demo, DEMO_DATA_DIR,
                                      seed)
    pre = precompute(data_dir=data_dir, store=store, mel=mel_for(data_dir, mel, DEMO_MEL),
                     workers=precompute_workers, device=device)
    plan = plan_training_task(model_name, pre["fingerprint"], force)
    base = {"model_name": model_name, "store": store, "data_dir": data_dir,
            "fingerprint": pre["fingerprint"], "rows": pre["rows"],
            "store_changed": pre["changed"], "classes": list(pre["classes"]),
            "demo": demo_info, "plan": plan}
    if not plan["train"]:
        log.info("retrain: nothing to do: %s", plan["reason"])
        champ = f"v{plan['champion']}" if plan["champion"] is not None else "none"
        create_markdown_artifact(
            markdown=f"### retrain skipped\n\n{plan['reason']}\n\nstore `{store}`: "
                     f"{pre['rows']} rows; champion {champ}\n",
            key="retrain", description="retrain skipped: store unchanged")
        return {**base, "skipped": True, "reason": plan["reason"]}
    log.info("retrain: training: %s", plan["reason"])
    # the training half imports torch, MLflow and matplotlib (seconds): only when it runs,
    # so that an unchanged retrain answers at once
    from flows.train import train
    from tasks.promote import promote_task
    from tasks.retrain_steps import (
        champion_checkpoint_task,
        evaluate_model_task,
        log_eval_metrics_task,
        prepare_checkpoint_dir_task,
        render_bundle_task,
    )
    from tasks.tracking import log_samples_task
    from tasks.train import register_version_task


    champion = champion_checkpoint_task(model_name)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    ckpt = prepare_checkpoint_dir_task(checkpoint_dir, pre["fingerprint"], epochs, force,
                                       warm_start, champion, stamp)
    log.info("retrain: %s into %s (to epoch %d%s)", ckpt["note"], ckpt["checkpoint_dir"],
             ckpt["target_epochs"], ", resuming" if ckpt["resumed"] else "")
    # one gallery per checkpoint folder: a resumed training keeps adding epochs to it
    out = str(Path(samples_dir) / Path(ckpt["checkpoint_dir"]).name)
    trained = train(store=store, preset=preset, epochs=ckpt["target_epochs"],
                    batch_size=batch_size, seed=seed, checkpoint_dir=ckpt["checkpoint_dir"],
                    resume=True, warm_start=ckpt["start"] == "warm-start",
                    model_name=model_name, experiment=experiment, register=False,
                    checkpoint_every=checkpoint_every, sample_every=sample_every,
                    device=device, show_progress=show_progress, samples_dir=out,
                    render_per_class=render_per_class)
    run_id = trained["run_id"]

    # train renders every sample_every epochs and at the end (and logs it to the run); only
    # a run that had nothing left to train renders the exported model here
    samples = trained.get("samples")
    if not samples:
        samples = render_bundle_task(trained["bundle"], out, trained["epoch"], render_per_class)
        log_samples_task(run_id, samples["samples_dir"])

    new_eval = evaluate_model_task(trained["bundle"], store, eval_per_class, eval_seed,
                                   eval_ceilings, metric)
    log_eval_metrics_task(run_id, new_eval["metrics"])
    champ_eval = None
    if champion is not None:
        champ_eval = evaluate_model_task(f"models:/{model_name}/{champion['version']}", store,
                                         eval_per_class, eval_seed, False, metric)

    version = register_version_task(trained["bundle"], run_id, model_name, {
        FINGERPRINT_TAG: pre["fingerprint"], "preset": preset, "epochs": trained["epoch"],
        "checkpoint": trained["checkpoint"], "data_dir": data_dir, "start": ckpt["note"],
        "retrain_flow_run": str(flow_run.id or ""), "trigger": plan["reason"]})
    promotion = promote_task(
        model_name, version, new_eval["value"],
        champion["version"] if champion else None,
        champ_eval["value"] if champ_eval else None, metric, lower, margin,
        champ_eval["error"] if champ_eval else None, new_eval["error"])
    log.info("retrain: %s v%d -> @%s: %s", model_name, version, promotion["decision"],
             promotion["reason"])
    return {**base, "skipped": False, "reason": plan["reason"], "version": version,
            "decision": promotion["decision"], "promotion": promotion,
            "metric": metric, "value": new_eval["value"],
            "champion_value": champ_eval["value"] if champ_eval else None,
            "eval_error": new_eval["error"], "metrics": new_eval["metrics"],
            "run_id": run_id, "checkpoint_dir": ckpt["checkpoint_dir"],
            "start": {**trained["start"], "note": ckpt["note"]}, "epoch": trained["epoch"],
            "epochs_trained": trained["epochs_trained"], "bundle": trained["bundle"],
            "samples_dir": samples["samples_dir"], "gallery": samples.get("gallery")}
