"""MLflow tracking and model registry behind a few typed helpers (kedro-mlflow style).

Everything else in the project reaches MLflow through here (or `tasks/tracking.py` for
run logging), so the URI defaults, the model format and the alias rules live in one place.

Embedded default: `sqlite:///<cwd>/mlflow.db` with artifacts in `<cwd>/mlartifacts`;
`MLFLOW_TRACKING_URI` / `MLFLOW_REGISTRY_URI` point it at a server instead.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType, Array, ColSpec, Schema

from gan.errors import first_line
from storage.promotion_rule import CANDIDATE, CHAMPION, NO_METRIC, decide, finite
from storage.registry_listing import (  # noqa: F401  (re-exported: one declaration each)
    KEY_METRICS,
    RegistryError,
    check_tracking_store,
    registry_uri,
    tracking_uri,
    wanted,
)

if TYPE_CHECKING:  # the bundle code imports torch: loaded only where a bundle is read
    from storage.model_bundle import GeneratorBundle

DEFAULT_MODEL_NAME = "audio-wgan"
MODEL_ARTIFACT = "model"  # name of the logged pyfunc model inside its run
BUNDLE_KEY = "bundle"  # pyfunc artifact key holding the generator bundle directory
PYFUNC_FILE = Path(__file__).with_name("pyfunc_generator.py")


# --- URIs and client -----------------------------------------------------------------------

def configure() -> str:
    """Point the fluent API at our URIs (it is process global); return the tracking URI.
    RegistryError (one line) for a URI MLflow must not use (`check_tracking_store`)."""
    check_tracking_store()
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri())
    return uri


def client() -> MlflowClient:
    configure()
    return MlflowClient(tracking_uri=tracking_uri(), registry_uri=registry_uri())


def artifact_root() -> str | None:
    """Where new experiments keep artifacts, for file-backed (sqlite) stores only.

    A tracking server decides that itself (its --artifacts-destination), so we return None.
    """
    env = os.environ.get("AUDIO_WGAN_ARTIFACT_ROOT")
    if env:
        return Path(env).resolve().as_uri()
    if tracking_uri().startswith("sqlite:"):
        return (Path.cwd() / "mlartifacts").resolve().as_uri()
    return None


def ensure_experiment(name: str) -> str:
    """Experiment id for `name`, creating it (with our artifact location) when missing."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_root())
    except MlflowException:  # created concurrently
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# --- the pyfunc model ----------------------------------------------------------------------

def model_signature() -> ModelSignature:
    """Request: class (+ optional count, seed, return_mel); response: one row per clip."""
    inputs = Schema([
        ColSpec("string", "class"),
        # AnyType: MLflow's scoring server would cast 1.5 to 1 (astype) before the model
        # sees it; the model checks types strictly itself (storage.pyfunc_generator)
        ColSpec(AnyType(), "count", required=False),
        ColSpec(AnyType(), "seed", required=False),
        ColSpec("boolean", "return_mel", required=False),
    ])
    outputs = Schema([
        ColSpec("string", "class"),
        ColSpec("long", "index"),
        ColSpec("long", "seed"),
        ColSpec("long", "sample_rate"),
        ColSpec(Array("float"), "audio"),
        ColSpec(Array(Array("float")), "mel_db", required=False),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _pip_requirements() -> list[str]:
    """Pinned to what trained the model; the project itself must be installed to serve it."""
    from importlib.metadata import version

    reqs = []
    for pkg in ("mlflow", "torch", "torchaudio", "numpy", "pandas", "soundfile"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except Exception:  # noqa: BLE001 - missing metadata: leave unpinned
            reqs.append(pkg)
    return reqs


def log_generator_model(bundle_dir: str | Path, run_id: str,
                        registered_name: str | None = DEFAULT_MODEL_NAME,
                        tags: dict[str, Any] | None = None) -> ModelVersion | None:
    """Log the bundle as a pyfunc (models from code: no pickled object) and register it.

    `python_model` is the path of `storage/pyfunc_generator.py`; the weights travel as the
    `bundle` artifact (state_dict + JSON). Returns the new registered version, or None when
    `registered_name` is None (logged only).
    """
    import pandas as pd

    from storage.model_bundle import META_FILE, load_bundle_dir

    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / META_FILE).is_file():
        raise RegistryError(f"{bundle_dir} is not a generator bundle")
    bundle = load_bundle_dir(bundle_dir)
    example = pd.DataFrame([{"class": bundle.class_names[0], "count": 1, "seed": 0}])
    tags = {k: str(v) for k, v in (tags or {}).items()}
    configure()
    active = mlflow.active_run()
    if active is not None and active.info.run_id != run_id:
        raise RegistryError(f"another MLflow run ({active.info.run_id}) is active")
    # resume the training run just long enough to attach the model to it
    ctx = mlflow.start_run(run_id=run_id) if active is None else _nullcontext()
    with ctx:
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(PYFUNC_FILE),
            artifacts={BUNDLE_KEY: str(bundle_dir)},
            signature=model_signature(),
            input_example=example,
            pip_requirements=_pip_requirements(),
            tags=tags or None,
        )
    if registered_name is None:
        return None
    c = client()
    mv = mlflow.register_model(info.model_uri, registered_name, tags={"run_id": run_id, **tags})
    c.update_model_version(registered_name, mv.version,
                           description=f"EMA generator from run {run_id}")
    return c.get_model_version(registered_name, mv.version)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --- loading -------------------------------------------------------------------------------

def _bundle_dir_in_model(model_dir: Path) -> Path:
    """Locate the bundle artifact inside a downloaded pyfunc model directory."""
    from storage.model_bundle import META_FILE

    if (model_dir / META_FILE).is_file():
        return model_dir
    mlmodel = Model.load(str(model_dir / "MLmodel"))
    conf = mlmodel.flavors.get("python_function", {})
    rel = (conf.get("artifacts") or {}).get(BUNDLE_KEY, {}).get("path")
    if not rel:
        raise RegistryError(f"{model_dir} is not an audio-wgan model (no {BUNDLE_KEY} artifact)")
    return model_dir / rel


def load_bundle(model_uri: str, device: str = "cpu") -> GeneratorBundle:
    """GeneratorBundle from any MLflow model URI (`models:/name/3`, `models:/name@champion`,
    `runs:/<id>/model`) or a local bundle/model directory. Reads the state_dict and JSON
    only: nothing is unpickled and the model code is not imported."""
    from storage.model_bundle import META_FILE, load_bundle_dir

    local = Path(model_uri)
    if "://" not in model_uri and ":/" not in model_uri and local.is_dir():
        if (local / META_FILE).is_file():
            return load_bundle_dir(local, device)
        if (local / "MLmodel").is_file():
            return load_bundle_dir(_bundle_dir_in_model(local), device)
        raise RegistryError(f"{local} is neither a generator bundle nor an MLflow model")
    configure()
    with tempfile.TemporaryDirectory(prefix="audio-wgan-model-") as tmp:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        except MlflowException as exc:
            raise RegistryError(f"cannot resolve {model_uri}: {first_line(exc)}") from None
        return load_bundle_dir(_bundle_dir_in_model(path), device)




# --- listing and aliases -------------------------------------------------------------------

def _aliases(c: MlflowClient, name: str) -> dict[str, list[str]]:
    rm = c.get_registered_model(name)
    out: dict[str, list[str]] = {}
    for alias, version in (rm.aliases or {}).items():
        out.setdefault(str(version), []).append(alias)
    return out


def list_versions(name: str = DEFAULT_MODEL_NAME) -> list[dict[str, Any]]:
    """Newest first: version, aliases, tags, key metrics of the source run, creation time."""
    c = client()
    try:
        aliases = _aliases(c, name)
    except MlflowException:
        raise RegistryError(f"no registered model named {name!r}") from None
    if "'" in name:
        raise RegistryError(f"invalid model name {name!r}")
    rows = []
    for mv in c.search_model_versions(f"name='{name}'"):
        metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                run_metrics = c.get_run(mv.run_id).data.metrics
                metrics = {k: v for k, v in run_metrics.items()
                           if k in KEY_METRICS or k.startswith("eval_")}
            except MlflowException:
                pass
        rows.append({
            "version": int(mv.version),
            "aliases": sorted(aliases.get(str(mv.version), [])),
            "tags": dict(mv.tags or {}),
            "metrics": metrics,
            "run_id": mv.run_id,
            "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(),
            "status": mv.status,
        })
    rows.sort(key=lambda r: r["version"], reverse=True)
    return rows


def set_alias(name: str, alias: str, version: int | str) -> None:
    client().set_registered_model_alias(name, alias, str(version))


def version_by_alias(name: str, alias: str) -> ModelVersion | None:
    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


# --- promotion -----------------------------------------------------------------------------

def _metric_of(c: MlflowClient, mv: ModelVersion, metric_name: str) -> float | None:
    """The champion's value: its promotion tag, else its source run's metric."""
    tag = (mv.tags or {}).get(f"metric.{metric_name}")
    if tag is not None:
        try:
            return float(tag)
        except ValueError:
            pass
    if mv.run_id:
        try:
            return c.get_run(mv.run_id).data.metrics.get(metric_name)
        except MlflowException:
            return None
    return None


def promote(name: str, version: int | str, metric_name: str | None = None,
            value: float | None = None, lower_is_better: bool = True, margin: float = 0.0,
            champion_value: float | None = None, champion_version: int | None = None,
            champion_note: str | None = None, value_note: str | None = None
            ) -> dict[str, Any]:
    """Apply the one promotion rule (`storage.promotion_rule.decide`) to a new version:
    set `@champion` or `@candidate` and write why, for every flow that registers.

    The champion is the version holding `@champion` now. `champion_value` is its score
    measured like `value` (same evaluation, same store: the retrain flow); a value for
    another version than `champion_version` is not used. Without one, the champion's
    recorded `metric.<name>` tag (or its run's metric) stands in, unless `champion_note`
    says why it could not be scored. Without `value` (the train flow: no evaluation) a
    later version is a candidate. Tags: `promotion_decision`, `promotion_reason`,
    `metric.<name>` (the new version's value; the champion's when measured now), and
    `former_champion` on a replaced champion.
    """
    c = client()
    version = str(version)
    metric = metric_name or "metric"
    champ = version_by_alias(name, CHAMPION)
    champ_version = int(champ.version) if champ is not None else None
    measured = champion_value is not None and champion_version in (None, champ_version)
    ref = champion_value if measured else None
    if champ is not None and not measured and champion_note is None and metric_name:
        ref = _metric_of(c, champ, metric_name)
    if value is None and value_note is None and metric_name is None:
        value_note = NO_METRIC
    decision = decide(value, champ_version, ref, metric, lower_is_better, margin,
                      champion_note, value_note, version=int(version))
    if metric_name is not None and finite(value):
        c.set_model_version_tag(name, version, f"metric.{metric_name}", repr(float(value)))
    if metric_name is not None and measured and finite(champion_value) \
            and champ_version is not None and str(champ_version) != version:
        # the champion's score on today's store, so `models` shows the comparison made
        c.set_model_version_tag(name, str(champ_version), f"metric.{metric_name}",
                                repr(float(champion_value)))
    set_alias(name, decision.alias, version)
    replaced = decision.alias == CHAMPION and champ_version is not None \
        and str(champ_version) != version
    if replaced:
        c.set_model_version_tag(name, str(champ_version), "former_champion",
                                f"replaced by v{version}")
        cand = version_by_alias(name, CANDIDATE)
        if cand is not None and str(cand.version) == version:
            c.delete_registered_model_alias(name, CANDIDATE)
    c.set_model_version_tag(name, version, "promotion_decision", decision.alias)
    c.set_model_version_tag(name, version, "promotion_reason", decision.reason)
    return {"model_name": name, "version": int(version), "decision": decision.alias,
            "reason": decision.reason, "metric": metric_name, "value": decision.value,
            "champion_value": decision.champion_value, "previous_champion": champ_version}
