"""`audio-wgan run`: the whole pipeline on the demo data with embedded defaults.

demo data -> precompute -> train (small preset) -> render -> evaluate -> register ->
promote, through the `retrain` flow, so `run` and the weekly schedule share one code path.
"""

from __future__ import annotations

import argparse
import os
import time

from audio_wgan.params import add_seed, output_dir
from flows.defaults import (
    CHECKPOINT_DIR,
    DEMO_DATA_DIR,
    DEMO_PRESET,
    MODEL_NAME,
    SAMPLES_DIR,
    STORE,
)

DEMO_RUN_EPOCHS = 150  # ~80% of samples classified correctly (EMA), see BENCHMARKS.md


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the whole pipeline on the synthetic demo data (embedded defaults)",
        description="Write the synthetic demo data (if missing), precompute log-mels, train "
        "the small preset, render samples and the gallery, evaluate, register the model in "
        "MLflow and promote it to @champion when it beats the current one. Re-running on "
        "unchanged data skips training unless --force.",
    )
    p.add_argument("--data-dir", default=DEMO_DATA_DIR, metavar="DIR",
                   help=f"clips folder (default: the demo data in {DEMO_DATA_DIR})")
    p.add_argument("--store", default=STORE, metavar="STORE")
    p.add_argument("--preset", choices=["seed", "small", "tiny"], default=DEMO_PRESET)
    p.add_argument("--epochs", type=int, default=DEMO_RUN_EPOCHS, metavar="N")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    p.add_argument("--sample-every", type=int, default=20, metavar="N",
                   help="render samples every N epochs (the seed's 20)")
    add_seed(p, 0)
    p.add_argument("--force", action="store_true", help="train even if the data did not change")
    p.add_argument("--model-name", default=MODEL_NAME, metavar="NAME")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audio_wgan.cli import UserError
    from audio_wgan.cmd_train import quiet_run_failures
    from flows.retrain import retrain
    from flows.train import validate_params
    from storage.registry import tracking_uri

    try:  # the training knobs, before demo data and precompute take minutes
        validate_params({"store": args.store, "preset": args.preset, "epochs": args.epochs,
                         "batch_size": args.batch_size, "sample_every": args.sample_every,
                         "seed": args.seed, "model_name": args.model_name})
    except ValueError as exc:  # TrainingError: one line naming the parameter
        raise UserError(str(exc)) from None
    output_dir(args.store, "--store")
    output_dir(CHECKPOINT_DIR, "checkpoint folder")
    quiet_run_failures()
    t0 = time.monotonic()
    try:
        result = retrain(data_dir=args.data_dir, store=args.store, preset=args.preset,
                         epochs=args.epochs, batch_size=args.batch_size,
                         sample_every=args.sample_every, seed=args.seed, force=args.force,
                         model_name=args.model_name, checkpoint_dir=CHECKPOINT_DIR,
                         samples_dir=SAMPLES_DIR, show_progress=True)
    except (ValueError, RuntimeError, OSError) as exc:
        lines = str(exc).strip().splitlines()
        raise UserError(lines[0] if lines else type(exc).__name__) from None
    minutes = (time.monotonic() - t0) / 60
    uri = tracking_uri()
    print()
    if result.get("skipped"):
        print(f"nothing to train: {result['reason']} ({minutes:.1f} min)")
    else:
        m = result.get("metrics") or {}
        acc = m.get("gen_accuracy")
        print(f"done in {minutes:.1f} min: {args.model_name} v{result['version']} -> "
              f"@{result['decision']} ({result['promotion']['reason']})")
        if acc is not None:
            print(f"  generated samples classified correctly: {100 * acc:.0f}% "
                  f"(chance {100 / max(1, len(result.get('classes') or [])):.0f}%)")
        print(f"  samples:     {result['samples_dir']}")
        if result.get("gallery"):
            print(f"  gallery:     {os.path.abspath(result['gallery'])}")
        print(f"  checkpoints: {result['checkpoint_dir']}")
    print(f"  model:       models:/{args.model_name}@champion  "
          f"(audio-wgan generate --model models:/{args.model_name}@champion "
          "--class siren --out generated)")
    print(f"  MLflow UI:   .venv/bin/mlflow ui --backend-store-uri {uri}")
    return 0
