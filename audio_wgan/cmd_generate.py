"""`audio-wgan generate --model URI --class NAME`: write N clips of one class as wav files."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated

import typer

from audio_wgan.command import dispatch
from audio_wgan.model_source import load_model_bundle
from audio_wgan.params import model_option, option, output_dir, ranged, seed_option
from gan.limits import CLIPS


def register(app: typer.Typer) -> None:
    app.command(
        "generate",
        short_help="generate clips of one class from a registered model",
        help="Write N wav files <class>_<index>.wav at the model's sample rate. "
        "URI is anything MLflow resolves (models:/audio-wgan@champion, models:/audio-wgan/3, "
        "runs:/<id>/model) or a local bundle directory. Deterministic for a seed.",
    )(command)


def command(
    model: Annotated[str, model_option()],
    class_name: Annotated[str, option("--class", metavar="NAME", show_default=False,
                                      help="the class to generate")],
    out: Annotated[str, option("--out", metavar="DIR", show_default=False,
                               help="folder the wav files are written into")],
    count: Annotated[int, option("-n", "--count", parser=ranged(CLIPS, "-n"), metavar="N",
                                 help=f"clips to write, 1..{CLIPS.hi} (default 1)")] = 1,
    seed: Annotated[int, seed_option(0)] = 0,
) -> int:
    return dispatch("generate", run, locals())


def run(args: SimpleNamespace) -> int:
    from audio_wgan.command import UserError
    from storage.atomic_files import atomic_wav
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
            atomic_wav(path, wave.numpy(), sr)  # whole or absent, even on a full disk
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
