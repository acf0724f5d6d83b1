"""`audio-wgan generate --model URI --class NAME`: write N clips of one class as wav files."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate clips of one class from a registered model",
        description="Write N wav files <class>_<index>.wav at the model's sample rate. "
        "URI is anything MLflow resolves (models:/audio-wgan@champion, models:/audio-wgan/3, "
        "runs:/<id>/model) or a local bundle directory. Deterministic for a seed.",
    )
    p.add_argument("--model", required=True, metavar="URI")
    p.add_argument("--class", dest="class_name", required=True, metavar="NAME")
    p.add_argument("-n", "--count", type=int, default=1, metavar="N")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import soundfile as sf

    from audio_wgan.cli import UserError
    from storage.model_bundle import MAX_CLIPS_PER_REQUEST, synthesise
    from storage.registry import RegistryError, load_bundle

    if not 1 <= args.count <= MAX_CLIPS_PER_REQUEST:
        raise UserError(f"-n must be between 1 and {MAX_CLIPS_PER_REQUEST}")
    if args.seed < 0:
        raise UserError("--seed must be >= 0")
    try:
        bundle = load_bundle(args.model)
    except (RegistryError, FileNotFoundError) as exc:
        raise UserError(str(exc).strip().splitlines()[0]) from None
    if args.class_name not in bundle.class_names:
        raise UserError(f"unknown class {args.class_name!r}; the model knows: "
                        f"{', '.join(bundle.class_names)}")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror or exc}") from None
    waves, _ = synthesise(bundle, args.class_name, args.count, args.seed)
    sr = bundle.mel.sample_rate
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.class_name)
    for i, wave in enumerate(waves):
        path = out / f"{safe}_{i}.wav"
        sf.write(path, wave.numpy(), sr, subtype="PCM_16")
        print(path)
    print(f"{len(waves)} clip(s) of {args.class_name!r}, {waves.shape[1] / sr:.2f} s at "
          f"{sr} Hz, seed {args.seed}, in {out}")
    return 0
