"""`audio-wgan render --model URI`: the fixed sample grid of a model as plots, wavs, gallery."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.model_source import load_model_bundle
from audio_wgan.params import model_option, option, output_dir, ranged, seed_option
from gan.limits import EPOCH, GRIFFIN_LIM_ITERS, PER_CLASS


def register(app: typer.Typer) -> None:
    app.command(
        "render",
        short_help="render a model's fixed sample grid: spectrogram grid, wav files, HTML "
        "gallery",
        help="Render the same fixed latent grid that training renders (rows = classes, "
        "columns = samples): OUT/epoch_<E>.png, OUT/gan_generated_audio/<class>/"
        "epoch_<E>_<k>.wav and OUT/index.html (open it in a browser). URI is anything MLflow "
        "resolves (models:/audio-wgan@champion, models:/audio-wgan/3, runs:/<id>/model) or a "
        "local bundle directory.",
    )(command)


def command(
    model: Annotated[str, model_option()],
    out: Annotated[str, option("--out", metavar="DIR",
                               help="samples folder to write into (default: ./samples)")
                   ] = "samples",
    per_class: Annotated[int, option(
        "--per-class", parser=ranged(PER_CLASS, "--per-class"), metavar="N",
        help=f"samples per class, 1..{PER_CLASS.hi} (default 4)")] = 4,
    seed: Annotated[int, seed_option(
        1234, "latent grid seed (default 1234, the one training renders with)")] = 1234,
    griffin_lim_iters: Annotated[int, option(
        "--griffin-lim-iters", parser=ranged(GRIFFIN_LIM_ITERS, "--griffin-lim-iters"),
        metavar="N", help=f"Griffin-Lim iterations, 1..{GRIFFIN_LIM_ITERS.hi} (default 32)")
    ] = 32,
    epoch: Annotated[int | None, option(
        "--epoch", parser=ranged(EPOCH, "--epoch"), metavar="E",
        help="epoch label of the files (default: the model's trained epochs)")] = None,
) -> int:
    return dispatch("render", run, locals())


def run(args: SimpleNamespace) -> int:
    from audio_wgan.command import UserError, quiet_run_failures
    from audio_wgan.progress_display import shown
    from flows.render import render

    output_dir(args.out, "--out")
    bundle = load_model_bundle(args.model)  # a bad model is one line before the flow starts
    epoch = args.epoch if args.epoch is not None else int(bundle.meta.get("epoch", 0) or 0)
    n = len(bundle.class_names) * args.per_class
    print(f"rendering {n} clips ({len(bundle.class_names)} classes x {args.per_class}) "
          f"from {args.model} ...", flush=True)
    quiet_run_failures()
    try:
        with shown(kinds={"render"}):
            paths = render(model=args.model, out_dir=args.out, per_class=args.per_class,
                           seed=args.seed, griffin_lim_iters=args.griffin_lim_iters,
                           epoch=epoch)
    except OSError as exc:
        raise UserError(f"cannot write to {args.out}: {exc.strerror or exc}") from None
    print(f"grid:    {paths['grid']}")
    print(f"audio:   {len(paths['audio'])} wav files under {paths['samples_dir']}")
    print(f"gallery: {paths['gallery']}")
    return 0
