"""`audio-wgan evaluate --model URI --store STORE`: offline quality metrics with ceilings."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.params import model_option, option, ranged, seed_option
from gan.limits import Range

# two per class at least (diversity needs a pair); 10,000 per class is hours on a CPU
N_PER_CLASS = Range("n-per-class", 2, 10_000, "an evaluation, not a data set")


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
        "--n-per-class", parser=ranged(N_PER_CLASS, "--n-per-class"), metavar="N",
        help=f"generated examples per class, {N_PER_CLASS.lo}..{N_PER_CLASS.hi} (default 32)"
    )] = 32,
    seed: Annotated[int, seed_option(20240)] = 20240,
    as_json: Annotated[bool, option(
        "--json", help="print a JSON object instead of a table")] = False,
) -> int:
    params = dict(locals())
    params["json"] = params.pop("as_json")
    return dispatch("evaluate", run, params)


def run(args: SimpleNamespace) -> int:
    import sys

    from audio_wgan.command import UserError, quiet_run_failures
    from audio_wgan.model_source import load_model_bundle
    from audio_wgan.progress_display import shown
    from flows.evaluate import evaluate
    from storage.mel_store import StoreError
    from tasks.evaluate import EvaluationError, format_table

    load_model_bundle(args.model)  # a bad model is one line before the flow starts
    if not args.json:
        print(f"evaluating {args.model} on {args.store} ...", file=sys.stderr, flush=True)
    quiet_run_failures()
    try:
        with shown(quiet=args.json, kinds={"evaluate"}):
            metrics = evaluate(model=args.model, store=args.store,
                               n_per_class=args.n_per_class, seed=args.seed)
    except (StoreError, EvaluationError) as exc:
        raise UserError(str(exc).strip().splitlines()[0]) from None
    if args.json:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in metrics.items()}
        print(json.dumps(clean, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(format_table(metrics))
    return 0
