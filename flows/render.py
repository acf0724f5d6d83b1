"""The `render` flow: a registered model's fixed sample grid as plots, wavs and a gallery.

Wiring only: `tasks.render` does the work. The same latents as training's renders, so a
model fetched from the registry can be compared with the samples of its training run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.defaults import MODEL_NAME, WORK_DIR
from storage.registry import load_bundle
from tasks.render import DEFAULT_GRIFFIN_LIM_ITERS, DEFAULT_SEED, render_samples

load_bundle_task = task(load_bundle, name="load-model", cache_policy=NO_CACHE, retries=2,
                        retry_delay_seconds=2)


@flow(name="render", flow_run_name="render-{model}")
def render(model: str = f"models:/{MODEL_NAME}@champion", out_dir: str = f"{WORK_DIR}/render",
           per_class: int = 4, seed: int = DEFAULT_SEED,
           griffin_lim_iters: int = DEFAULT_GRIFFIN_LIM_ITERS,
           epoch: int | None = None) -> dict[str, Any]:
    """Render `model` (any MLflow model URI or a local bundle folder) into `out_dir`; the
    files are labelled `epoch` (default: the model's trained epochs)."""
    bundle = load_bundle_task(model)
    if epoch is None:
        epoch = int(bundle.meta.get("epoch", 0) or 0)
    return render_samples(bundle, out_dir=out_dir, epoch=epoch, per_class=per_class,
                          seed=seed, griffin_lim_iters=griffin_lim_iters)
