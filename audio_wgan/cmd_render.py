"""`audio-wgan render --model URI`: the fixed sample grid of a model as plots, wavs, gallery."""

from __future__ import annotations

import argparse

from audio_wgan.model_source import load_model_bundle
from audio_wgan.params import add_seed, output_dir, ranged
from gan.limits import EPOCH, GRIFFIN_LIM_ITERS, PER_CLASS

__all__ = ["load_model_bundle", "register", "run"]  # cmd_evaluate imports the loader here


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render",
        help="render a model's fixed sample grid: spectrogram grid, wav files, HTML gallery",
        description="Render the same fixed latent grid that training renders (rows = classes, "
        "columns = samples): OUT/epoch_<E>.png, OUT/gan_generated_audio/<class>/"
        "epoch_<E>_<k>.wav and OUT/index.html (open it in a browser). URI is anything MLflow "
        "resolves (models:/audio-wgan@champion, models:/audio-wgan/3, runs:/<id>/model) or a "
        "local bundle directory.",
    )
    p.add_argument("--model", required=True, metavar="URI")
    p.add_argument("--out", default="samples", metavar="DIR",
                   help="samples folder to write into (default: ./samples)")
    p.add_argument("--per-class", type=ranged(PER_CLASS, "--per-class"), default=4,
                   metavar="N", help=f"samples per class, 1..{PER_CLASS.hi} (default 4)")
    add_seed(p, 1234, "latent grid seed (default 1234, the one training renders with)")
    p.add_argument("--griffin-lim-iters", type=ranged(GRIFFIN_LIM_ITERS, "--griffin-lim-iters"),
                   default=32, metavar="N",
                   help=f"Griffin-Lim iterations, 1..{GRIFFIN_LIM_ITERS.hi} (default 32)")
    p.add_argument("--epoch", type=ranged(EPOCH, "--epoch"), default=None, metavar="E",
                   help="epoch label of the files (default: the model's trained epochs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audio_wgan.cli import UserError
    from tasks.render import render

    output_dir(args.out, "--out")
    bundle = load_model_bundle(args.model)
    epoch = args.epoch if args.epoch is not None else int(bundle.meta.get("epoch", 0) or 0)
    n = len(bundle.class_names) * args.per_class
    print(f"rendering {n} clips ({len(bundle.class_names)} classes x {args.per_class}) "
          f"from {args.model} ...", flush=True)
    try:
        paths = render(bundle, out_dir=args.out, epoch=epoch, per_class=args.per_class,
                       seed=args.seed, griffin_lim_iters=args.griffin_lim_iters,
                       title=f"{args.model} (epoch {epoch})")
    except OSError as exc:
        raise UserError(f"cannot write to {args.out}: {exc.strerror or exc}") from None
    print(f"grid:    {paths['grid']}")
    print(f"audio:   {len(paths['audio'])} wav files under {paths['samples_dir']}")
    print(f"gallery: {paths['gallery']}")
    return 0
