"""The retrain flow's first steps, which decide in seconds whether there is anything to do:
demo data, the mel overrides to precompute with, and the train-or-skip plan.

Nothing here imports torch or MLflow (an unchanged `audio-wgan run` stops after these steps):
the plan reads the registry through `storage.registry_listing`, and asks MLflow only where
that read-only listing cannot answer (another backend, an unknown schema). The training
half is `tasks/retrain_steps.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from clips.demo import MARKER, write_demo_data
from storage.promotion_rule import CHAMPION
from storage.registry_listing import RegistryError, read_versions

FINGERPRINT_TAG = "store_fingerprint"  # on a model version: the store content it trained on


class RetrainError(ValueError):
    """The retrain cannot go on as asked; one line."""


# --- demo data -----------------------------------------------------------------------------

def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether two paths (relative ones to the working directory) name the same place."""
    return Path(a).resolve() == Path(b).resolve()


def ensure_demo_data(data_dir: str | Path, clips_per_class: int, demo: bool | None = None,
                     default_dir: str | Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Write the synthetic demo data set into data_dir when it is wanted and not complete.

    `demo=None` (auto): only for the default demo folder (`default_dir`, the flows pass
    `work/demo-data`), and only when it is missing, so a fresh checkout runs with no
    parameters. `demo=True`: data_dir is a demo folder (it may
    grow: a larger `clips_per_class` adds the missing clips, existing ones stay). A folder
    that exists but is not a demo data set is never written into.
    """
    p = Path(data_dir)
    auto = default_dir is not None and same_path(p, default_dir) and not p.exists()
    wanted = demo if demo is not None else auto
    if not wanted:
        return {"data_dir": str(p), "demo": bool((p / MARKER).is_file()), "written": 0}
    if p.exists() and any(p.iterdir()) and not (p / MARKER).is_file():
        raise RetrainError(f"{p} holds files but is not a demo data set; refusing to write "
                           f"demo clips into it (pass demo=false, or another data_dir)")
    info = write_demo_data(p, clips_per_class=clips_per_class, seed=seed)
    return {"data_dir": str(p), "demo": True, "written": info["written"],
            "clips_per_class": clips_per_class}


def mel_for(data_dir: str | Path, mel: dict[str, Any] | None,
            demo_mel: dict[str, Any]) -> dict[str, Any] | None:
    """The mel overrides to precompute with: `mel`, else `demo_mel` for a demo data set,
    else None (a new store then takes the seed's defaults; an existing one keeps its own)."""
    if mel is not None:
        return dict(mel)
    if (Path(data_dir) / MARKER).is_file():
        return dict(demo_mel)
    return None


# --- train or skip -------------------------------------------------------------------------

def plan_training(model_name: str, fingerprint: str, force: bool = False) -> dict[str, Any]:
    """Decide whether this store content needs a new model.

    Train when forced, when nothing is registered yet, or when no registered version was
    trained on exactly this store content (its `store_fingerprint` tag). A version that
    lost to the champion still counts: the same data would give the same model again.
    """
    try:
        versions = registered_versions(model_name)
    except RegistryError:
        versions = []
    champion = next((v for v in versions if CHAMPION in v["aliases"]), None)
    base = {"fingerprint": fingerprint, "versions": len(versions),
            "champion": champion["version"] if champion else None}
    if force:
        return {**base, "train": True, "reason": "forced"}
    if not versions:
        return {**base, "train": True, "reason": f"no version of {model_name!r} registered yet"}
    same = [v for v in versions if v["tags"].get(FINGERPRINT_TAG) == fingerprint]
    if same:
        v = same[0]
        alias = f" (@{', @'.join(v['aliases'])})" if v["aliases"] else ""
        return {**base, "train": False, "version": v["version"],
                "reason": f"store unchanged: v{v['version']}{alias} was trained on this "
                          f"exact content (fingerprint {fingerprint[:12]})"}
    ref = champion or versions[0]
    was = ref["tags"].get(FINGERPRINT_TAG, "unknown")
    return {**base, "train": True,
            "reason": f"store changed since v{ref['version']} (fingerprint {was[:12]} -> "
                      f"{fingerprint[:12]})"}



def registered_versions(model_name: str) -> list[dict[str, Any]]:
    """Newest first (`storage.registry.list_versions`'s rows): from the SQLite registry file
    directly when it can answer, else through MLflow (which costs seconds to import)."""
    rows = read_versions(model_name)
    if rows is not None:
        return rows
    from storage import registry

    return registry.list_versions(model_name)


ensure_demo_data_task = task(ensure_demo_data, name="ensure-demo-data", cache_policy=NO_CACHE)
plan_training_task = task(plan_training, name="plan-training", cache_policy=NO_CACHE)
