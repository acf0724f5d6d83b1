"""A small synthetic, deterministic demo data set with the seed's five class names.

The clips are procedurally synthesised (no recordings, nothing downloaded); each class has a
clearly different spectral signature so that a conditional GAN trained for minutes on a CPU
can learn them, and a classifier can tell them apart:

- siren: a tone sweeping slowly up and down (with two harmonics)
- engine_idling: a low harmonic hum (30-55 Hz fundamental) with amplitude modulation
- drilling: on/off bursts of a bright tone with many high harmonics
- dog_bark: short formant-like noise bursts with a fast decay
- street_music: random pentatonic melodies with chords, plucked envelopes
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from gan.limits import DEMO_CLIPS_PER_CLASS, SEED

CLASSES = ("dog_bark", "drilling", "engine_idling", "siren", "street_music")
DEMO_SAMPLE_RATE = 16000
DEMO_SECONDS = 2.05  # two whole 64-frame examples at 16 kHz, hop 256
MARKER = "DEMO-DATA.json"


def _t(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _siren(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    t = _t(n, sr)
    lo, hi = rng.uniform(500, 800), rng.uniform(1200, 1700)
    rate = rng.uniform(0.4, 1.2)  # sweeps per second
    freq = lo + (hi - lo) * 0.5 * (1 - np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.1 * np.sin(3 * phase)


def _engine(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    t = _t(n, sr)
    f0 = rng.uniform(30, 55)
    x = sum((1.0 / k) * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) for k in range(1, 13))
    am = 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(6, 14) * t)
    rumble = np.convolve(rng.standard_normal(n), np.ones(64) / 64, mode="same")
    return x * am + 2.0 * rumble


def _drilling(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    t = _t(n, sr)
    f0 = rng.uniform(280, 450)
    tone = sum(np.sin(2 * np.pi * f0 * k * t) * (0.9 ** k) for k in range(2, 18))
    gate = np.zeros(n)
    pos = int(rng.uniform(0, 0.2) * sr)
    while pos < n:
        on = int(rng.uniform(0.25, 0.6) * sr)
        gate[pos:pos + on] = 1.0
        pos += on + int(rng.uniform(0.1, 0.3) * sr)
    gate = np.convolve(gate, np.ones(160) / 160, mode="same")
    return tone * gate + 0.15 * rng.standard_normal(n) * gate


def _dog_bark(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out = np.zeros(n)
    n_barks = int(rng.integers(2, 5))
    starts = np.sort(rng.uniform(0, DEMO_SECONDS - 0.3, n_barks))
    for s in starts:
        ln = int(rng.uniform(0.12, 0.22) * sr)
        i0 = int(s * sr)
        ln = min(ln, n - i0)
        tt = np.arange(ln) / sr
        f1, f2 = rng.uniform(450, 700), rng.uniform(1100, 1600)
        env = np.exp(-tt * rng.uniform(12, 20)) * (1 - np.exp(-tt * 300))
        noise = rng.standard_normal(ln)
        formants = (np.sin(2 * np.pi * f1 * tt) + 0.6 * np.sin(2 * np.pi * f2 * tt)) * (
            1 + 0.8 * noise)
        out[i0:i0 + ln] += env * formants
    return out


_PENTATONIC = np.array([0, 2, 4, 7, 9])


def _street_music(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out = np.zeros(n)
    base = rng.uniform(196, 262)
    note_len = int(rng.uniform(0.18, 0.3) * sr)
    for i0 in range(0, n, note_len):
        ln = min(note_len, n - i0)
        tt = np.arange(ln) / sr
        deg = rng.choice(_PENTATONIC) + 12 * int(rng.integers(0, 2))
        chord = [deg, deg + 4, deg + 7] if rng.random() < 0.4 else [deg]
        env = np.exp(-tt * 6)
        for semis in chord:
            f = base * 2 ** (semis / 12)
            out[i0:i0 + ln] += env * (np.sin(2 * np.pi * f * tt) + 0.4 * np.sin(4 * np.pi * f * tt))
    return out


SYNTHS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "dog_bark": _dog_bark,
    "drilling": _drilling,
    "engine_idling": _engine,
    "siren": _siren,
    "street_music": _street_music,
}


def synthesise_clip(cls: str, index: int, seed: int = 0, sr: int = DEMO_SAMPLE_RATE,
                    seconds: float = DEMO_SECONDS) -> np.ndarray:
    """One deterministic clip (float32, peak 0.8) for class `cls`, clip `index`, data-set `seed`."""
    rng = np.random.default_rng([seed, CLASSES.index(cls), index])
    n = int(seconds * sr)
    x = SYNTHS[cls](rng, n, sr)
    x = x + 0.01 * rng.standard_normal(n) * np.abs(x).max()  # a little room noise
    return (0.8 * x / max(np.abs(x).max(), 1e-9)).astype(np.float32)


def write_demo_data(out_dir: str | Path, clips_per_class: int = 40, seed: int = 0) -> dict:
    """Write OUT_DIR/<class>/<class>_<k>.wav; unchanged files are not rewritten (idempotent).

    The counts are checked against `gan.limits` (RangeError, a ValueError) before anything
    is written.
    """
    clips_per_class = DEMO_CLIPS_PER_CLASS.check(clips_per_class, "clips_per_class")
    seed = SEED.check(seed, "seed")
    out = Path(out_dir)
    written = 0
    for cls in CLASSES:
        d = out / cls
        d.mkdir(parents=True, exist_ok=True)
        for k in range(clips_per_class):
            path = d / f"{cls}_{k:03d}.wav"
            if path.exists():
                continue
            tmp = path.with_name(f".{path.name}.tmp")
            sf.write(tmp, synthesise_clip(cls, k, seed), DEMO_SAMPLE_RATE, subtype="PCM_16",
                     format="WAV")
            tmp.replace(path)
            written += 1
    info = {
        "synthetic": True,
        "classes": list(CLASSES),
        "clips_per_class": clips_per_class,
        "seed": seed,
        "sample_rate": DEMO_SAMPLE_RATE,
        "seconds": DEMO_SECONDS,
        "note": "Procedurally synthesised demo sounds, not recordings.",
    }
    (out / MARKER).write_text(json.dumps(info, indent=2))
    return {"out_dir": str(out), "written": written,
            "files": clips_per_class * len(CLASSES), **info}
