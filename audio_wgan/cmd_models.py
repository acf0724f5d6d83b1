"""`audio-wgan models`: registered versions with aliases, tags and key metrics."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.params import option
from flows.defaults import MODEL_NAME

_SHOWN_TAGS = ("preset", "epochs", "store_fingerprint", "promotion_reason")


def register(app: typer.Typer) -> None:
    app.command(
        "models",
        short_help="list registered model versions",
        help="List the versions of a registered model (newest first) with aliases, "
        "tags and key metrics of the training run. Honours MLFLOW_TRACKING_URI.",
    )(command)


def command(
    name: Annotated[str, option("--name", metavar="NAME",
                                help="the registered model's name")] = MODEL_NAME,
    as_json: Annotated[bool, option("--json", help="machine-readable output")] = False,
) -> int:
    return dispatch("models", run, {"name": name, "json": as_json})


def run(args: SimpleNamespace) -> int:
    from audio_wgan.command import UserError
    from storage.registry_listing import RegistryError, read_versions

    try:  # the embedded SQLite registry is read directly; anything else asks MLflow
        rows = read_versions(args.name)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    if rows is None:
        rows = _ask_mlflow(args.name)
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    print(f"{args.name}: {len(rows)} version(s)")
    for r in rows:
        aliases = ",".join(r["aliases"]) or "-"
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items()))
        print(f"  v{r['version']:<4} {aliases:<20} {r['created'][:19]}  run {r['run_id']}")
        tags = "  ".join(f"{k}={r['tags'][k]}" for k in _SHOWN_TAGS if k in r["tags"])
        if tags:
            print(f"        {tags}")
        if metrics:
            print(f"        {metrics}")
    return 0


def _ask_mlflow(name: str) -> list[dict]:
    from mlflow.exceptions import MlflowException

    from audio_wgan.command import UserError
    from storage.registry import RegistryError, list_versions, tracking_uri

    try:
        return list_versions(name)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    except (MlflowException, OSError) as exc:  # a tracking URI that cannot be used
        text = " ".join(str(getattr(exc, "message", None) or exc).split())[:300]
        raise UserError(f"cannot read the registry at {tracking_uri()}: {text}") from None
