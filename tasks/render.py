"""Render a generator's fixed latent grid to spectrogram plots, wav files and an HTML gallery.

Layout under `out_dir` (the seed's `samples/` folder):

    epoch_020.png                              grid: rows = classes, columns = samples
    gan_generated_audio/<class>/epoch_020_<k>.wav
    spectrograms/<class>/epoch_020_<k>.png     one thumbnail per clip, for the gallery
    real_audio/<class>/real_<k>.wav            real rows of the store (when given), through
    real_spectrograms/<class>/real_<k>.png     the same Griffin-Lim, to compare with
    loss_curve.png                             when a loss history is passed
    index.html, gallery.json                   the gallery of every epoch so far

The latents come from `gan.sampling.fixed_grid` with a fixed seed, so the same clip slots are
rendered at every epoch and progress can be heard slot by slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from gan.models import Generator
from gan.sampling import fixed_grid, mels_to_audio, sample_db
from gan.spectral import MelConfig, MelInverter, Normaliser
from report.gallery import (
    AUDIO_DIR,
    LOSS_CURVE,
    REAL_AUDIO_DIR,
    REAL_THUMB_DIR,
    THUMB_DIR,
    GalleryManifest,
    epoch_tag,
    safe_dirname,
    write_gallery,
)
from report.plots import db_limits, plot_loss_curve, plot_mel_grid, save_mel_thumbnail
from report.progress import report
from report.run_context import in_prefect_run
from storage.atomic_files import atomic_wav
from storage.model_bundle import GeneratorBundle

DEFAULT_SEED = 1234
DEFAULT_GRIFFIN_LIM_ITERS = 32
# On a CPU, Griffin-Lim over a big batch is memory-bound: bench/bench_render.py found no gain
# (often a loss) past a few 128x256 clips, while small mels gain ~2x from batching. So CPU
# batches are sized to keep one complex spectrogram batch within a few MB (cache-friendly,
# and well under glibc's 32 MB mmap threshold, above which every temporary page-faults).
CPU_BATCH_BYTES = 8 << 20
MAX_BATCH = 64
# a picture (and a gallery page) is bounded whatever the model: at most MAX_RENDER_CLASSES
# classes (the first ones; `classes_rendered` says how many of how many) and
# MAX_GRID_CELLS clips, fewer per class when there are many classes. 300 classes x 4 once
# drew 1,200 subplots for over ten minutes at the end of a training run.
MAX_RENDER_CLASSES = 32
MAX_GRID_CELLS = 256


def inversion_batch(cfg: MelConfig, device: torch.device | str) -> int:
    """Clips per Griffin-Lim batch: bounded by memory on a CPU, large on an accelerator."""
    if torch.device(device).type != "cpu":
        return MAX_BATCH
    per_clip = (cfg.n_fft // 2 + 1) * cfg.frames * 8  # one complex64 spectrogram
    return int(max(1, min(MAX_BATCH, CPU_BATCH_BYTES // per_clip)))


def _unpack(generator_or_bundle: Generator | GeneratorBundle, class_names: Sequence[str] | None,
            mel_cfg: MelConfig | None, normaliser: Normaliser | None
            ) -> tuple[Generator, list[str], MelConfig, Normaliser]:
    if isinstance(generator_or_bundle, GeneratorBundle):
        b = generator_or_bundle
        return (b.generator, list(class_names or b.class_names), mel_cfg or b.mel,
                normaliser or b.normaliser)
    if class_names is None or mel_cfg is None or normaliser is None:
        raise ValueError("rendering a bare generator needs class_names, mel_cfg and normaliser")
    return generator_or_bundle, list(class_names), mel_cfg, normaliser


def render(generator_or_bundle: Generator | GeneratorBundle,
           class_names: Sequence[str] | None = None, mel_cfg: MelConfig | None = None,
           normaliser: Normaliser | None = None, out_dir: str | Path = "samples", epoch: int = 0,
           per_class: int = 4, seed: int = DEFAULT_SEED,
           griffin_lim_iters: int = DEFAULT_GRIFFIN_LIM_ITERS,
           history: Sequence[dict[str, float]] | None = None, title: str | None = None,
           real: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Render one epoch's fixed grid (plain function; `render_samples` is the Prefect task).

    Pass the EMA generator during training (with class_names, mel_cfg, normaliser) or a
    `GeneratorBundle`. `real` = (dB rows (N, n_mels, frames), class indices (N,)) from the
    store: written once per call beside the generated clips, through the same inversion, so
    the gallery can show real beside generated. Returns the written paths (strings):
    samples_dir, grid, audio, thumbnails, loss_curve (or None), gallery, manifest, real (the
    real clips), plus epoch and files (all of them).
    """
    gen, names, cfg, norm = _unpack(generator_or_bundle, class_names, mel_cfg, normaliser)
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    if griffin_lim_iters < 1:
        raise ValueError("griffin_lim_iters must be at least 1")
    if epoch < 0:
        raise ValueError("epoch must be >= 0")
    if len(names) != gen.n_classes:
        raise ValueError(f"{len(names)} class names for a generator of {gen.n_classes} classes")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    device = next(gen.parameters()).device
    n_classes = len(names)
    names = names[:MAX_RENDER_CLASSES]  # the grid's labels index these, the first classes
    per_class = min(per_class, max(1, MAX_GRID_CELLS // len(names)))
    if real is not None:
        keep = real[1] < len(names)
        real = (real[0][keep], real[1][keep])

    noise, labels = fixed_grid(len(names), per_class, gen.noise_dim, seed)
    db = sample_db(gen, norm, labels, noise)  # (C*P, n_mels, frames) dB, CPU
    inverter = MelInverter(cfg, n_iter=griffin_lim_iters).to(device)
    waves = _invert_reporting(db, inverter, inversion_batch(cfg, device), device)

    tag = epoch_tag(epoch)
    dirs = [safe_dirname(n, i) for i, n in enumerate(names)]
    grid = plot_mel_grid(db, names, per_class, cfg, root / f"{tag}.png",
                         title=title or f"epoch {epoch}")
    vmin, vmax = db_limits(db)
    audio, thumbs = [], []
    for i in range(len(labels)):
        c, k = int(labels[i]), i % per_class
        wav = root / AUDIO_DIR / dirs[c] / f"{tag}_{k}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        atomic_wav(wav, waves[i], cfg.sample_rate)
        audio.append(str(wav))
        thumbs.append(str(save_mel_thumbnail(db[i], root / THUMB_DIR / dirs[c] / f"{tag}_{k}.png",
                                             vmin, vmax)))
    real_audio = _write_real(real, dirs, cfg, inverter, root, device, vmin, vmax)
    loss_curve = None
    if history:
        lc = plot_loss_curve(history, root / LOSS_CURVE, title="training losses")
        loss_curve = str(lc) if lc else None

    manifest = GalleryManifest.read(root)
    manifest.classes = [{"name": n, "dir": d} for n, d in zip(names, dirs, strict=True)]
    manifest.info.update({"sample_rate": cfg.sample_rate, "n_mels": cfg.n_mels,
                          "frames": cfg.frames, "per_class": per_class, "seed": seed,
                          "griffin_lim_iters": griffin_lim_iters, "latest_epoch": epoch,
                          "classes_rendered": f"{len(names)} of {n_classes}"})
    manifest_path = manifest.write(root)
    gallery = write_gallery(root)
    files = [str(grid), *audio, *thumbs, *real_audio, str(manifest_path), str(gallery)]
    if loss_curve:
        files.append(loss_curve)
    return {"epoch": int(epoch), "samples_dir": str(root), "grid": str(grid), "audio": audio,
            "thumbnails": thumbs, "loss_curve": loss_curve, "gallery": str(gallery),
            "real": real_audio, "classes_rendered": [len(names), n_classes],
            "manifest": str(manifest_path), "files": files}


def _invert_reporting(db: torch.Tensor, inverter: MelInverter, batch: int,
                      device: torch.device) -> np.ndarray:
    """Griffin-Lim of the grid one inversion batch at a time (the same batches
    `mels_to_audio` makes, so the same waves), reporting progress after each."""
    n = len(db)
    report("render", 0, n, f"render: 0/{n} clips")
    parts = []
    for i in range(0, n, batch):  # peak-normalised per clip, no clipping
        parts.append(mels_to_audio(db[i:i + batch].to(device), inverter, batch_size=batch))
        report("render", min(i + batch, n), n, f"render: {min(i + batch, n)}/{n} clips")
    return torch.cat(parts).cpu().numpy()


def _write_real(real: tuple[torch.Tensor, torch.Tensor] | None, dirs: list[str],
                cfg: MelConfig, inverter: MelInverter, root: Path, device: torch.device,
                vmin: float, vmax: float) -> list[str]:
    """The store's real rows as wavs + thumbnails (`real_<k>` per class); their paths."""
    if real is None or len(real[0]) == 0:
        return []
    db, labels = real
    waves = mels_to_audio(db.float().to(device), inverter,
                          batch_size=inversion_batch(cfg, device)).cpu().numpy()
    out, seen = [], [0] * len(dirs)
    for i, c in enumerate(labels.tolist()):
        k, seen[c] = seen[c], seen[c] + 1
        wav = root / REAL_AUDIO_DIR / dirs[c] / f"real_{k}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        atomic_wav(wav, waves[i], cfg.sample_rate)
        save_mel_thumbnail(db[i], root / REAL_THUMB_DIR / dirs[c] / f"real_{k}.png", vmin,
                           vmax)
        out.append(str(wav))
    return out


def render_markdown(paths: dict[str, Any]) -> str:
    """Markdown for a Prefect artifact pointing at what a render wrote."""
    lines = [
        f"### Samples, epoch {paths.get('epoch', '?')}",
        "",
        f"- gallery (open in a browser): `{paths['gallery']}`",
        f"- spectrogram grid: `{paths['grid']}`",
        f"- audio: {len(paths.get('audio', []))} wav files under "
        f"`{Path(paths['samples_dir']) / AUDIO_DIR}`",
    ]
    if paths.get("loss_curve"):
        lines.append(f"- loss curve: `{paths['loss_curve']}`")
    return "\n".join(lines) + "\n"


@task(name="render-samples", cache_policy=NO_CACHE)
def render_samples(generator_or_bundle: Generator | GeneratorBundle,
                   class_names: Sequence[str] | None = None, mel_cfg: MelConfig | None = None,
                   normaliser: Normaliser | None = None, out_dir: str | Path = "samples",
                   epoch: int = 0, per_class: int = 4, seed: int = DEFAULT_SEED,
                   griffin_lim_iters: int = DEFAULT_GRIFFIN_LIM_ITERS,
                   history: Sequence[dict[str, float]] | None = None,
                   real: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Prefect task: `render(...)`, plus a markdown artifact when run inside a flow/task run.

    Called with `.fn()` outside any run (tests, CLI) it only renders.
    """
    with torch.no_grad():
        paths = render(generator_or_bundle, class_names, mel_cfg, normaliser, out_dir, epoch,
                       per_class, seed, griffin_lim_iters, history, real=real)
    if in_prefect_run():
        create_markdown_artifact(markdown=render_markdown(paths), key="render-samples",
                                 description=f"rendered samples, epoch {epoch}")
    return paths
