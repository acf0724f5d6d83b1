"""`audio-wgan demo-data OUT_DIR`: write the synthetic five-class demo set."""

from __future__ import annotations

import argparse

from audio_wgan.params import add_seed, output_dir, ranged
from gan.limits import DEMO_CLIPS_PER_CLASS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="write a small synthetic (procedurally generated) five-class demo data set",
        description="Write OUT_DIR/<class>/*.wav for dog_bark, drilling, engine_idling, siren "
        "and street_music. The sounds are synthetic, not recordings; deterministic for a seed.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--clips-per-class", type=ranged(DEMO_CLIPS_PER_CLASS, "--clips-per-class"),
                   default=40, metavar="N",
                   help=f"clips per class, 1..{DEMO_CLIPS_PER_CLASS.hi} (default 40)")
    add_seed(p, 0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audio_wgan.cli import UserError
    from tasks.demo_data import write_demo_data

    output_dir(args.out_dir, "OUT_DIR")
    try:
        info = write_demo_data(args.out_dir, args.clips_per_class, args.seed)
    except (OSError, RuntimeError) as exc:  # soundfile reports a failed write as RuntimeError
        raise UserError(f"cannot write {args.out_dir}: {getattr(exc, 'strerror', None) or exc}"
                        ) from None
    print(f"demo data: {info['files']} synthetic clips in {info['out_dir']} "
          f"({len(info['classes'])} classes, {info['written']} newly written)")
    return 0
