"""`audio-wgan generate --model URI --class NAME`: write N clips of one class as wav files."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from audio_wgan.model_source import load_model_bundle
from audio_wgan.params import add_seed, output_dir, ranged
from gan.limits import CLIPS


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
    p.add_argument("-n", "--count", type=ranged(CLIPS, "-n"), default=1, metavar="N",
                   help=f"clips to write, 1..{CLIPS.hi} (default 1)")
    add_seed(p, 0)
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import soundfile as sf

    from audio_wgan.cli import UserError
    from storage.model_bundle import synthesise

    out = output_dir(args.out, "--out")
    bundle = load_model_bundle(args.model)
    if args.class_name not in bundle.class_names:
        raise UserError(f"unknown class {args.class_name[:200]!r}; the model knows: "
                        f"{', '.join(bundle.class_names)[:300]}")
    try:
        waves, _ = synthesise(bundle, args.class_name, args.count, args.seed)
    except ValueError as exc:  # BundleError: a model whose output is not finite
        raise UserError(f"cannot generate from {args.model[:200]}: {exc}") from None
    sr = bundle.mel.sample_rate
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.class_name)
    safe = safe.encode()[:200].decode(errors="ignore")  # a file name is at most 255 bytes
    created = not out.exists()
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for i, wave in enumerate(waves):
            path = out / f"{safe}_{i}.wav"
            sf.write(path, wave.numpy(), sr, subtype="PCM_16")
            written.append(path)
    except (OSError, RuntimeError) as exc:  # soundfile reports a failed write as RuntimeError
        for path in written:  # nothing half-written: the clips of this call, or none
            with contextlib.suppress(OSError):
                path.unlink()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise UserError(f"cannot write to {out}: {getattr(exc, 'strerror', None) or exc}"
                        ) from None
    for path in written:
        print(path)
    print(f"{len(waves)} clip(s) of {args.class_name!r}, {waves.shape[1] / sr:.2f} s at "
          f"{sr} Hz, seed {args.seed}, in {out}")
    return 0
