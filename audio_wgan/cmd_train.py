"""`audio-wgan train --store STORE`: run the Prefect `train` flow, one progress line per epoch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.params import choice, option, output_dir, seed_option
from flows.defaults import CHECKPOINT_DIR, DEFAULT_PRESET, EXPERIMENT, MODEL_NAME, PRESET_NAMES


def register(app: typer.Typer) -> None:
    app.command(
        "train",
        short_help="train the conditional WGAN-GP on a mel store and register the model",
        help="Train (or resume) the class-conditional WGAN-GP on a precomputed mel store, "
        "checkpointing every --checkpoint-every epochs, then log the EMA generator to MLflow "
        "and register a new model version (first version: alias champion, later ones: "
        "candidate). --epochs is the total to reach: '--epochs 20 --resume' after 10 epochs "
        "trains 10 more. Honours MLFLOW_TRACKING_URI and PREFECT_API_URL. Every option is a "
        "parameter of the train flow (flows.train.TrainParams; tests/test_train_params.py "
        "checks the names and defaults).",
    )(command)


def command(
    store: Annotated[str, option("--store", metavar="STORE", show_default=False,
                                 help="mel store (Zarr) to train on")],
    preset: Annotated[str, option(
        "--preset", **choice(*PRESET_NAMES),
        help="architecture: seed (the seed's nets, as its document describes them), "
        "small/tiny (the seed's layout, narrower), small-proj-cbn (projection critic + "
        "conditional BatchNorm), small-proj-cbn-diffaug (the same with DiffAugment's time "
        f"translation; BENCHMARKS.md); default {DEFAULT_PRESET}")] = DEFAULT_PRESET,
    epochs: Annotated[int, option("--epochs", metavar="N", help="total epochs to reach")
                      ] = 100,
    nproc: Annotated[int, option(
        "--nproc", metavar="N", help="train on N data-parallel ranks launched with torchrun "
        "(CUDA: one GPU per rank, NCCL; CPU: gloo); the effective batch is N x --batch-size "
        "(default 1: this process); at most one rank per CUDA device, or per CPU core "
        "without one, unless --force-nproc")] = 1,
    force_nproc: Annotated[bool, option(
        "--force-nproc", help="launch --nproc ranks even when the machine has fewer CUDA "
        "devices (or CPU cores)")] = False,
    max_minutes: Annotated[float | None, option(
        "--max-minutes", metavar="M", help="stop at the first epoch boundary after M "
        "minutes of training, then checkpoint, render and register as usual")] = None,
    batch_size: Annotated[int, option("--batch-size", metavar="N", help="examples per step")
                          ] = 64,
    seed: Annotated[int, seed_option(0)] = 0,
    checkpoint_dir: Annotated[str, option("--checkpoint-dir", metavar="DIR",
                                          help="checkpoint folder")] = CHECKPOINT_DIR,
    checkpoint_every: Annotated[int, option(
        "--checkpoint-every", metavar="N",
        help="epochs per checkpoint (and per Prefect task run)")] = 10,
    resume: Annotated[bool, option(
        "--resume", help="continue from the newest checkpoint in --checkpoint-dir")] = False,
    warm_start: Annotated[bool, option(
        "--warm-start", help="like --resume, but allowed when the store changed (weights "
        "only)")] = False,
    model_name: Annotated[str, option("--model-name", metavar="NAME",
                                      help="registered model name")] = MODEL_NAME,
    experiment: Annotated[str, option("--experiment", metavar="NAME",
                                      help="MLflow experiment")] = EXPERIMENT,
    no_register: Annotated[bool, option(
        "--no-register", help="train and export the bundle, but do not log/register the "
        "model")] = False,
    device: Annotated[str, option("--device", metavar="DEV",
                                  help="auto (cuda when available), cpu, cuda")] = "auto",
    memory_budget_mb: Annotated[int, option(
        "--memory-budget-mb", metavar="MB",
        help="hold the data in memory when it fits, else stream from the store")] = 2048,
    quiet: Annotated[bool, option("--quiet", help="no per-epoch progress lines")] = False,
) -> int:
    return dispatch("train", run, locals())


def run(args: SimpleNamespace) -> int:
    import sys

    from audio_wgan.command import UserError, quiet_run_failures
    from audio_wgan.progress_display import shown
    from flows.train import train
    from gan.errors import TrainingError
    from storage.checkpoints import CheckpointError
    from storage.registry import RegistryError
    from storage.store_errors import StoreError

    output_dir(args.checkpoint_dir, "--checkpoint-dir")  # before any epoch is trained
    quiet_run_failures()
    try:
        with shown(quiet=args.quiet, lines=sys.stdout, kinds={"train"}):
            result = train(
                store=args.store, preset=args.preset, epochs=args.epochs,
                batch_size=args.batch_size, seed=args.seed, checkpoint_dir=args.checkpoint_dir,
                checkpoint_every=args.checkpoint_every, resume=args.resume,
                warm_start=args.warm_start, model_name=args.model_name,
                experiment=args.experiment, register=not args.no_register, device=args.device,
                memory_budget_mb=args.memory_budget_mb, show_progress=not args.quiet,
                max_minutes=args.max_minutes, nproc=args.nproc,
                force_nproc=args.force_nproc)
    except (TrainingError, CheckpointError, RegistryError, StoreError) as exc:
        lines = str(exc).strip().splitlines()
        raise UserError(lines[0] if lines else type(exc).__name__) from None
    start = result["start"]
    if start["mode"] != "fresh":
        print(f"{start['mode']} from {start['checkpoint']} (epoch {start['epoch']})")
    why = " (time limit reached)" if result.get("stopped_by_time") else ""
    print(f"trained {result['epochs_trained']} epoch(s) to epoch {result['epoch']}{why} on "
          f"{result['device']}; checkpoint {result['checkpoint']}")
    print(f"MLflow run {result['run_id']}; bundle {result['bundle']}")
    if result.get("gallery"):
        print(f"gallery {result['gallery']}")
    if result["model"]:
        m = result["model"]
        print(f"registered {m['model_name']} version {m['version']} as {m['decision']}: "
              f"{m['reason']}")
    return 0
