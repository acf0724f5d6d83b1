"""`audio-wgan models`: registered versions with aliases, tags and key metrics."""

from __future__ import annotations

import argparse
import json

from flows.defaults import MODEL_NAME

_SHOWN_TAGS = ("preset", "epochs", "store_fingerprint", "promotion_reason")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list registered model versions",
        description="List the versions of a registered model (newest first) with aliases, "
        "tags and key metrics of the training run. Honours MLFLOW_TRACKING_URI.",
    )
    p.add_argument("--name", default=MODEL_NAME, metavar="NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from audio_wgan.cli import UserError
    from storage.registry import RegistryError, list_versions, tracking_uri

    try:
        rows = list_versions(args.name)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    except (MlflowException, OSError) as exc:  # a tracking URI that cannot be used
        text = " ".join(str(getattr(exc, "message", None) or exc).split())[:300]
        raise UserError(f"cannot read the registry at {tracking_uri()}: {text}") from None
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
