"""Deployment pull step: run every flow in the project root, wherever the worker started.

Prefect's usual `set_working_directory: {directory: "{{ $PWD }}"}` resolves `$PWD` in the
flow-run process, i.e. in the directory the *worker* was started from; a worker started by
systemd or from another folder would then look for `flows/...` and `work/...` in the wrong
place. This step finds the checkout from the installed package instead (the project is
installed editable, so `flows/` lives in it), or takes an explicit directory / the
AUDIO_WGAN_ROOT environment variable (for an image where the code lives elsewhere).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MARKER = "prefect.yaml"


def project_root(directory: str | None = None) -> Path:
    """The directory flows run in: `directory`, else $AUDIO_WGAN_ROOT, else the checkout."""
    chosen = directory or os.environ.get("AUDIO_WGAN_ROOT")
    root = Path(chosen) if chosen else Path(__file__).resolve().parents[1]
    if not (root / MARKER).is_file() or not (root / "flows").is_dir():
        raise FileNotFoundError(
            f"{root} is not the audio-wgan project root (no {MARKER} and flows/); "
            "set AUDIO_WGAN_ROOT or pass directory=")
    return root.resolve()


def set_project_root(directory: str | None = None) -> dict[str, str]:
    """Pull step (prefect.yaml): chdir to the project root; returns {"directory": path}."""
    root = project_root(directory)
    os.chdir(root)
    return {"directory": str(root)}


def _run_parameters() -> dict[str, Any]:
    """The parameters of the flow run this pull step prepares (from the API)."""
    from prefect.runtime import flow_run

    return dict(flow_run.parameters or {})


def ensure_demo_inputs(needs_store: bool = False) -> dict[str, Any]:
    """Pull step: make the embedded defaults runnable on a fresh checkout.

    When the run's `data_dir` is the default demo folder and it is missing, write the
    synthetic demo data. With `needs_store` (the `train` deployment), when the run's `store`
    is the default store and it does not exist yet, build it from the demo data with the
    `precompute` flow (a flow run of its own). Runs whose parameters point elsewhere are
    left alone: user data is never generated or touched here.
    """
    from flows.defaults import DEMO_CLIPS_PER_CLASS, DEMO_DATA_DIR, DEMO_MEL, STORE
    from tasks.retrain_plan import ensure_demo_data, same_path

    params = _run_parameters()
    data_dir = params.get("data_dir", DEMO_DATA_DIR)
    done: dict[str, Any] = {"demo_data": None, "demo_store": None}
    if same_path(data_dir, DEMO_DATA_DIR):
        done["demo_data"] = ensure_demo_data(DEMO_DATA_DIR, DEMO_CLIPS_PER_CLASS,
                                             default_dir=DEMO_DATA_DIR)
    store = params.get("store", STORE)
    if needs_store and same_path(store, STORE) and not Path(STORE).exists():
        from flows.precompute import precompute

        ensure_demo_data(DEMO_DATA_DIR, DEMO_CLIPS_PER_CLASS, default_dir=DEMO_DATA_DIR)
        summary = precompute(data_dir=DEMO_DATA_DIR, store=STORE, mel=dict(DEMO_MEL))
        done["demo_store"] = {"store": STORE, "rows": summary["rows"]}
    return done
