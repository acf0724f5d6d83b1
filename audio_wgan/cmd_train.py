"""`audio-wgan train --store STORE`: run the Prefect `train` flow, one progress line per epoch."""

from __future__ import annotations

import argparse

from audio_wgan.params import add_seed, output_dir
from flows.defaults import CHECKPOINT_DIR, DEFAULT_PRESET, EXPERIMENT, MODEL_NAME, PRESET_NAMES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the conditional WGAN-GP on a mel store and register the model",
        description="Train (or resume) the class-conditional WGAN-GP on a precomputed mel "
        "store, checkpointing every --checkpoint-every epochs, then log the EMA generator to "
        "MLflow and register a new model version (first version: alias champion, later "
        "ones: candidate). --epochs is the total to reach: '--epochs 20 --resume' after 10 "
        "epochs trains 10 more. Honours MLFLOW_TRACKING_URI and PREFECT_API_URL.",
    )
    p.add_argument("--store", required=True, metavar="STORE", help="mel store (Zarr) to train on")
    p.add_argument("--preset", choices=PRESET_NAMES, default=DEFAULT_PRESET,
                   help="architecture: seed (the seed's nets, as its document describes "
                   "them), small/tiny (the seed's layout, narrower), small-proj-cbn "
                   f"(projection critic + conditional BatchNorm; BENCHMARKS.md); default "
                   f"{DEFAULT_PRESET}")
    p.add_argument("--epochs", type=int, default=100, metavar="N", help="total epochs to reach")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train on N data-parallel ranks launched with torchrun (CUDA: one GPU "
                   "per rank, NCCL; CPU: gloo); the effective batch is N x --batch-size "
                   "(default 1: this process)")
    p.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="stop at the first epoch boundary after M minutes of training, then "
                   "checkpoint, render and register as usual")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    add_seed(p, 0)
    p.add_argument("--checkpoint-dir", default=CHECKPOINT_DIR, metavar="DIR")
    p.add_argument("--checkpoint-every", type=int, default=10, metavar="N",
                   help="epochs per checkpoint (and per Prefect task run)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument("--warm-start", action="store_true",
                   help="like --resume, but allowed when the store changed (weights only)")
    p.add_argument("--model-name", default=MODEL_NAME, metavar="NAME")
    p.add_argument("--experiment", default=EXPERIMENT, metavar="NAME")
    p.add_argument("--no-register", action="store_true",
                   help="train and export the bundle, but do not log/register the model")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    p.add_argument("--memory-budget-mb", type=int, default=2048, metavar="MB",
                   help="hold the data in memory when it fits, else stream from the store")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.set_defaults(func=run)


def quiet_run_failures() -> None:
    """Drop Prefect's console tracebacks for failed flow/task runs: the CLI prints the reason
    as one line. The records still reach the Prefect API (the UI keeps them)."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        failed_run = record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
        return not (failed_run and record.levelno >= logging.ERROR)

    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.addFilter(keep)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    from audio_wgan.cli import UserError
    from flows.train import train
    from storage.checkpoints import CheckpointError
    from storage.registry import RegistryError
    from storage.store_errors import StoreError
    from tasks.train import TrainingError

    output_dir(args.checkpoint_dir, "--checkpoint-dir")  # before any epoch is trained
    quiet_run_failures()
    try:
        result = train(
            store=args.store, preset=args.preset, epochs=args.epochs,
            batch_size=args.batch_size, seed=args.seed, checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every, resume=args.resume,
            warm_start=args.warm_start, model_name=args.model_name,
            experiment=args.experiment, register=not args.no_register, device=args.device,
            memory_budget_mb=args.memory_budget_mb, show_progress=not args.quiet,
            max_minutes=args.max_minutes, nproc=args.nproc)
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
    if result["model"]:
        m = result["model"]
        print(f"registered {m['model_name']} version {m['version']} as {m['decision']}: "
              f"{m['reason']}")
    return 0
