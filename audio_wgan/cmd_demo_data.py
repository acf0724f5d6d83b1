"""`audio-wgan demo-data OUT_DIR`: write the synthetic five-class demo set."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="write a small synthetic (procedurally generated) five-class demo data set",
        description="Write OUT_DIR/<class>/*.wav for dog_bark, drilling, engine_idling, siren "
        "and street_music. The sounds are synthetic, not recordings; deterministic for a seed.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--clips-per-class", type=int, default=40, metavar="N")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from audio_wgan.cli import UserError
    from tasks.demo_data import write_demo_data

    if args.clips_per_class < 1:
        raise UserError("--clips-per-class must be at least 1")
    try:
        info = write_demo_data(args.out_dir, args.clips_per_class, args.seed)
    except OSError as exc:
        raise UserError(f"cannot write {args.out_dir}: {exc.strerror or exc}") from None
    print(f"demo data: {info['files']} synthetic clips in {info['out_dir']} "
          f"({len(info['classes'])} classes, {info['written']} newly written)")
    return 0
