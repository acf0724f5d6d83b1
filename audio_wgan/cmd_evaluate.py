"""`audio-wgan evaluate --model URI --store STORE`: offline quality metrics with ceilings."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.params import model_option, option, seed_option


def register(app: typer.Typer) -> None:
    app.command(
        "evaluate",
        short_help="quality metrics of a model against its mel store (with real/Griffin-Lim "
        "ceilings)",
        help="Score generated examples with a small classifier trained on the store "
        "(cached next to it): accuracy of the intended class, Inception Score, Fréchet "
        "distance of classifier embeddings, NDB/K and within-class diversity, beside the same "
        "figures for held-out real examples and for real examples through Griffin-Lim. "
        "The real examples it compares with (the reference and the ceiling) come from about "
        "a fifth of each class's source files, chosen by a hash of their paths, which "
        "`audio-wgan train` never trains on: no evaluation row is a row the model saw.",
    )(command)


def command(
    model: Annotated[str, model_option()],
    store: Annotated[str, option("--store", metavar="STORE", show_default=False,
                                 help="the model's mel store")],
    n_per_class: Annotated[int, option(
        "--n-per-class", metavar="N", help="generated examples per class, 2..10000 "
        "(default 32)")] = 32,
    seed: Annotated[int, seed_option(20240)] = 20240,
    as_json: Annotated[bool, option(
        "--json", help="print a JSON object instead of a table")] = False,
) -> int:
    params = dict(locals())
    params["json"] = params.pop("as_json")
    return dispatch("evaluate", run, params)


def run(args: SimpleNamespace) -> int:
    import sys

    from audio_wgan.command import UserError
    from audio_wgan.model_source import load_model_bundle
    from storage.mel_store import StoreError
    from tasks.evaluate import EvaluationError, evaluate, format_table

    if not 2 <= args.n_per_class <= 10000:
        raise UserError("--n-per-class must be between 2 and 10000")
    bundle = load_model_bundle(args.model)
    if not args.json:
        print(f"evaluating {args.model} on {args.store} ...", file=sys.stderr, flush=True)
    try:
        metrics = evaluate(bundle, args.store, n_per_class=args.n_per_class, seed=args.seed)
    except (StoreError, EvaluationError) as exc:
        raise UserError(str(exc).strip().splitlines()[0]) from None
    if args.json:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in metrics.items()}
        print(json.dumps(clean, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(format_table(metrics))
    return 0
