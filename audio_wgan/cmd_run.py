"""`audio-wgan run`: the whole pipeline on the demo data with embedded defaults.

demo data -> precompute -> train (small preset) -> render -> evaluate -> register ->
promote, through the `retrain` flow, so `run` and the weekly schedule share one code path.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.params import choice, option, output_dir, seed_option
from flows.defaults import (
    CHECKPOINT_DIR,
    DEMO_DATA_DIR,
    DEMO_PRESET,
    MODEL_NAME,
    SAMPLES_DIR,
    STORE,
)

DEMO_RUN_EPOCHS = 150  # ~80% of samples classified correctly (EMA), see BENCHMARKS.md


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        short_help="run the whole pipeline on the synthetic demo data (embedded defaults)",
        help="Write the synthetic demo data (if missing), precompute log-mels, train the "
        "small preset, render samples and the gallery, evaluate, register the model in "
        "MLflow and promote it to @champion when it beats the current one. Re-running on "
        "unchanged data skips training unless --force.",
    )(command)


def command(
    data_dir: Annotated[str, option(
        "--data-dir", metavar="DIR",
        help=f"clips folder (default: the demo data in {DEMO_DATA_DIR})")] = DEMO_DATA_DIR,
    store: Annotated[str, option("--store", metavar="STORE", help="mel store (Zarr)")
                     ] = STORE,
    preset: Annotated[str, option("--preset", **choice("seed", "small", "tiny"),
                                  help="architecture")] = DEMO_PRESET,
    epochs: Annotated[int, option("--epochs", metavar="N", help="epochs to train")
                      ] = DEMO_RUN_EPOCHS,
    batch_size: Annotated[int, option("--batch-size", metavar="N",
                                      help="examples per step")] = 32,
    sample_every: Annotated[int, option(
        "--sample-every", metavar="N", help="render samples every N epochs (the seed's 20)")
    ] = 20,
    seed: Annotated[int, seed_option(0)] = 0,
    force: Annotated[bool, option("--force", help="train even if the data did not change")
                     ] = False,
    model_name: Annotated[str, option("--model-name", metavar="NAME",
                                      help="registered model name")] = MODEL_NAME,
) -> int:
    return dispatch("run", run, locals())


def run(args: SimpleNamespace) -> int:
    import sys

    from audio_wgan.command import UserError, quiet_run_failures
    from audio_wgan.progress_display import shown
    from flows.retrain import retrain
    from flows.train_params import validate_params
    from storage.registry_listing import tracking_uri

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
        with shown(lines=sys.stdout, kinds={"precompute", "train"}):
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
