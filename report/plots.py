"""Matplotlib figures for a run: the per-epoch spectrogram grid, thumbnails, loss curves.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot,
so rendering from Prefect worker threads shares no global figure state and needs no display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gan.spectral import MelConfig, mel_band_edges_hz
from storage.atomic_files import atomic_figure

CMAP = "magma"
DB_RANGE = 80.0  # colour scale spans the loudest value down to 80 dB below it


def db_limits(db: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """Shared colour limits for a batch: one scale for the whole grid, so cells compare."""
    arr = np.asarray(db, dtype=np.float64)
    vmax = float(np.nanmax(arr)) if arr.size else 0.0
    return vmax - DB_RANGE, vmax


def _hz_label(hz: float) -> str:
    return f"{hz / 1000:.1f}k" if hz >= 1000 else f"{hz:.0f}"


def plot_mel_grid(db: torch.Tensor, class_names: Sequence[str], per_class: int,
                  cfg: MelConfig, path: str | Path, title: str = "") -> Path:
    """Grid of log-mels (rows = classes, columns = samples) with a dB colour bar.

    db is (n_classes * per_class, n_mels, frames) in class-major order (`fixed_grid`'s).
    Time axis in seconds; the mel axis is labelled with band centre frequencies in Hz.
    """
    arr = db.detach().cpu().float().numpy() if isinstance(db, torch.Tensor) else np.asarray(db)
    n_rows, n_cols = len(class_names), per_class
    if len(arr) != n_rows * n_cols:
        raise ValueError(f"expected {n_rows * n_cols} spectrograms, got {len(arr)}")
    vmin, vmax = db_limits(arr)
    seconds = arr.shape[-1] * cfg.hop_length / cfg.sample_rate
    centres = mel_band_edges_hz(cfg)
    n_mels = arr.shape[1]
    tick_idx = np.linspace(0, n_mels - 1, 5).round().astype(int)

    fig = Figure(figsize=(2.4 * n_cols + 1.2, 1.6 * n_rows + 0.8), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True)
    image = None
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            image = ax.imshow(arr[r * n_cols + c], origin="lower", aspect="auto", cmap=CMAP,
                              vmin=vmin, vmax=vmax, extent=(0.0, seconds, 0, n_mels),
                              interpolation="nearest")
            if c == 0:
                ax.set_ylabel(f"{class_names[r]}\nHz", fontsize=8)
            if r == n_rows - 1:
                ax.set_xlabel("time (s)", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(tick_idx + 0.5, [_hz_label(centres[i]) for i in tick_idx])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.12, right=0.86, bottom=0.08, top=0.92, wspace=0.08, hspace=0.15)
    cax = fig.add_axes((0.89, 0.15, 0.02, 0.7))
    cbar = fig.colorbar(image, cax=cax)
    cbar.set_label("dB", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    return atomic_figure(Path(path), lambda f: fig.savefig(f, format="png"))


def save_mel_thumbnail(db: torch.Tensor | np.ndarray, path: str | Path, vmin: float,
                       vmax: float) -> Path:
    """One spectrogram as a bare PNG (one pixel per bin, low frequencies at the bottom).

    `imsave` writes the array directly, which is ~100x faster than a figure per clip.
    """
    arr = db.detach().cpu().float().numpy() if isinstance(db, torch.Tensor) else np.asarray(db)
    return atomic_figure(Path(path), lambda f: mpimg.imsave(
        f, arr, cmap=CMAP, vmin=vmin, vmax=vmax, origin="lower", format="png"))


def plot_loss_curve(history: Sequence[dict[str, float]], path: str | Path,
                    x_key: str | None = None, title: str = "") -> Path | None:
    """One panel per numeric metric that changes (losses differ in scale), against step or
    epoch.

    history: per-step or per-epoch dicts, e.g. {"epoch": 3, "critic_loss": -1.2, ...}.
    x_key defaults to "step" if present, else "epoch", else the row index. Returns None when
    there is nothing to plot.
    """
    rows = [h for h in history if isinstance(h, dict)]
    if not rows:
        return None
    if x_key is None:
        x_key = next((k for k in ("step", "epoch") if all(k in h for h in rows)), None)
    names: list[str] = []
    for h in rows:
        for k, v in h.items():
            if k != x_key and k not in names and isinstance(v, (int, float)) \
                    and not isinstance(v, bool):
                names.append(k)
    # a series that never changes (generator steps per epoch) is a panel that carries nothing
    names = [n for n in names if len(rows) < 2 or len({h.get(n) for h in rows}) > 1]
    if not names:
        return None
    xs = [float(h[x_key]) if x_key else float(i) for i, h in enumerate(rows)]
    n_cols = 2 if len(names) > 1 else 1
    n_rows = math.ceil(len(names) / n_cols)
    fig = Figure(figsize=(5.0 * n_cols, 2.2 * n_rows + 0.5), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i // n_cols][i % n_cols]
        pts = [(x, float(h[name])) for x, h in zip(xs, rows, strict=True)
               if isinstance(h.get(name), (int, float)) and math.isfinite(float(h[name]))]
        if pts:
            ax.plot(*zip(*pts, strict=True), linewidth=1.0, marker="." if len(pts) < 50 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x_key or "index", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for j in range(len(names), n_rows * n_cols):
        axes[j // n_cols][j % n_cols].set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return atomic_figure(Path(path), lambda f: fig.savefig(f, format="png"))
