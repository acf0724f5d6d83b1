"""`audio-wgan evaluate --model URI --store STORE`: offline quality metrics with ceilings."""

from __future__ import annotations

import argparse
import json
import math

from audio_wgan.params import add_seed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="quality metrics of a model against its mel store (with real/Griffin-Lim ceilings)",
        description="Score generated examples with a small classifier trained on the store "
        "(cached next to it): accuracy of the intended class, Inception Score, Fréchet "
        "distance of classifier embeddings, NDB/K and within-class diversity, beside the same "
        "figures for held-out real examples and for real examples through Griffin-Lim. "
        "The real examples it compares with (the reference and the ceiling) come from about "
        "a fifth of each class's source files, chosen by a hash of their paths, which "
        "`audio-wgan train` never trains on: no evaluation row is a row the model saw.",
    )
    p.add_argument("--model", required=True, metavar="URI",
                   help="MLflow model URI or a local bundle directory")
    p.add_argument("--store", required=True, metavar="STORE", help="the model's mel store")
    p.add_argument("--n-per-class", type=int, default=32, metavar="N",
                   help="generated examples per class (default 32)")
    add_seed(p, 20240)
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from audio_wgan.cli import UserError
    from audio_wgan.cmd_render import load_model_bundle
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
