"""`audio-wgan demo-data OUT_DIR`: write the synthetic five-class demo set."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.params import option, output_dir, ranged, seed_option
from gan.limits import DEMO_CLIPS_PER_CLASS


def register(app: typer.Typer) -> None:
    app.command(
        "demo-data",
        short_help="write a small synthetic (procedurally generated) five-class demo data set",
        help="Write OUT_DIR/<class>/*.wav for dog_bark, drilling, engine_idling, siren and "
        "street_music. The sounds are synthetic, not recordings; deterministic for a seed.",
    )(command)


def command(
    out_dir: Annotated[str, typer.Argument(metavar="OUT_DIR", show_default=False)],
    clips_per_class: Annotated[int, option(
        "--clips-per-class", parser=ranged(DEMO_CLIPS_PER_CLASS, "--clips-per-class"),
        metavar="N", help=f"clips per class, 1..{DEMO_CLIPS_PER_CLASS.hi} (default 40)")] = 40,
    seed: Annotated[int, seed_option(0)] = 0,
) -> int:
    return dispatch("demo-data", run, locals())


def run(args: SimpleNamespace) -> int:
    from audio_wgan.command import UserError
    from clips.demo import write_demo_data

    output_dir(args.out_dir, "OUT_DIR")
    try:
        info = write_demo_data(args.out_dir, args.clips_per_class, args.seed)
    except (OSError, RuntimeError) as exc:  # soundfile reports a failed write as RuntimeError
        raise UserError(f"cannot write {args.out_dir}: {getattr(exc, 'strerror', None) or exc}"
                        ) from None
    print(f"demo data: {info['files']} synthetic clips in {info['out_dir']} "
          f"({len(info['classes'])} classes, {info['written']} newly written)")
    return 0
