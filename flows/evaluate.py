"""The `evaluate` flow: a model's quality metrics against its mel store, with the real and
Griffin-Lim ceilings (what `audio-wgan evaluate` runs).

Wiring only: `tasks.evaluate` does the work; the model is loaded as the render flow loads it.
"""

from __future__ import annotations

from prefect import flow

from flows.defaults import MODEL_NAME, STORE
from flows.render import load_bundle_task
from tasks.evaluate import DEFAULT_N_PER_CLASS, DEFAULT_SEED, evaluate_bundle


@flow(name="evaluate", flow_run_name="evaluate-{model}")
def evaluate(model: str = f"models:/{MODEL_NAME}@champion", store: str = STORE,
             n_per_class: int = DEFAULT_N_PER_CLASS, seed: int = DEFAULT_SEED
             ) -> dict[str, float]:
    """Score `model` (any MLflow model URI or a local bundle folder) on `store`."""
    bundle = load_bundle_task(model)
    return evaluate_bundle(bundle, store, n_per_class=n_per_class, seed=seed)
