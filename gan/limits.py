"""The ranges of the numeric code's inputs, declared once.

Every edge that takes these values from a person or a request (the CLI, the flows'
parameter models, the served model) checks them against this table, so a value one
command accepts is never refused by the next, and no request can ask for unbounded work.
Pure Python: the edges turn a `Range` into an argparse type or a pydantic field.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

MAX_CLASS_NAME = 200  # characters: a class name travels in JSON, tags and one-line output


class RangeError(ValueError):
    """A value outside its declared range (or not an integer); the message is one line."""


class SettingError(RangeError):
    """An environment setting that is not a value it may take; names the variable."""


def env_number(name: str, default: float, *, allow_zero: bool = False) -> float:
    """The environment setting `name` as a finite number > 0 (>= 0 with `allow_zero`),
    `default` when unset or empty; SettingError naming the variable otherwise: a typo in
    a limit must not silently become the default."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        want = "a number >= 0" if allow_zero else "a number > 0"
        raise SettingError(f"{name}={raw[:40]!r} is not {want}; fix or unset it")
    return value


# Bounded reads of source clips (clips.features.ReadLimits): the declared length at the
# file's own rate, and the file's size (the decoded float32 samples may be 4x that)
MAX_CLIP_SECONDS_ENV, DEFAULT_MAX_CLIP_SECONDS = "AUDIO_WGAN_MAX_CLIP_SECONDS", 3600.0
MAX_FILE_MB_ENV, DEFAULT_MAX_FILE_MB = "AUDIO_WGAN_MAX_FILE_MB", 1024


def read_limit_settings() -> tuple[float, int]:
    """(max clip seconds, max file bytes) from the environment; SettingError when set to
    something that is not a positive number."""
    return (env_number(MAX_CLIP_SECONDS_ENV, DEFAULT_MAX_CLIP_SECONDS),
            int(env_number(MAX_FILE_MB_ENV, DEFAULT_MAX_FILE_MB) * (1 << 20)))


@dataclass(frozen=True)
class Range:
    """An inclusive integer range with the name it is reported under."""

    name: str
    lo: int
    hi: int
    why: str = ""

    def check(self, value: object, name: str | None = None) -> int:
        """`value` as an int when it is an integer (not a bool) within [lo, hi]."""
        label = name or self.name
        if isinstance(value, bool) or not isinstance(value, int):
            raise RangeError(f"{label} must be an integer between {self.lo} and {self.hi}, "
                             f"not {_short(value)}")
        if not self.lo <= value <= self.hi:
            raise RangeError(f"{label} must be between {self.lo} and {self.hi}, "
                             f"not {_short(value)}")
        return int(value)

    def parse(self, text: str, name: str | None = None) -> int:
        """A decimal integer string (as typed on a command line) checked against the range."""
        s = text.strip()
        digits = s[1:] if s[:1] in "+-" else s
        if not digits.isdigit() or not digits.isascii() or len(digits) > 40:
            raise RangeError(f"{name or self.name} must be an integer between {self.lo} and "
                             f"{self.hi}, not {_short(text)}")
        return self.check(int(s), name)


def _short(value: object, limit: int = 40) -> str:
    text = repr(value) if not isinstance(value, int) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# torch.Generator.manual_seed takes a signed 64-bit integer; negative seeds are refused so
# that one seed has one spelling
SEED = Range("seed", 0, 2**63 - 1, "torch seeds are 64-bit")
# clips made by one call (generate -n, one served row, and the total of one request):
# 512 clips of the seed's 2.97 s at 22.05 kHz are ~130 MB of float32 audio
CLIPS = Range("count", 1, 512, "one call's audio stays well inside memory")
# clips per class of a rendered grid (rows = classes): the grid is one figure
PER_CLASS = Range("per-class", 1, 64, "the grid is one figure")
# Griffin-Lim iterations: quality stops improving long before 1000
GRIFFIN_LIM_ITERS = Range("griffin-lim-iters", 1, 1000, "quality stops improving far sooner")
# synthetic demo clips per class: 10,000 x 5 classes x 2 s at 16 kHz is ~3 GB of wav
DEMO_CLIPS_PER_CLASS = Range("clips-per-class", 1, 10_000, "a demo set, not a corpus")
# where precompute runs its files (clips.pools), its threads or worker processes, and files
# per write batch
POOLS = ("auto", "threads", "processes", "dask")
PORT = Range("port", 1, 65535, "a TCP port")
WORKERS = Range("workers", 1, 1024, "more than a big machine's cores only thrashes")
BATCH_FILES = Range("batch-size", 1, 65_536, "a batch is also capped at 32 MB of rows")
# an epoch label or count: large enough for any real run, small enough for file names
EPOCH = Range("epoch", 0, 10_000_000, "file names hold the epoch")

# Ceilings of a mel configuration, wherever one comes from (precompute options, a bundle's
# model.json): beyond them a model, a filterbank or one example's audio gets huge
MEL_CEILINGS = {"sample_rate": 384_000, "n_fft": 16_384, "hop_length": 16_384,
                "n_mels": 1024, "frames": 8192}
MAX_EXAMPLE_SAMPLES = 1 << 24  # one example's audio: ~6 min at 44.1 kHz


def check_mel_size(mel: object) -> None:
    """RangeError when a MelConfig (anything with its fields) is above the ceilings."""
    for name, ceiling in MEL_CEILINGS.items():
        value = getattr(mel, name)
        if value > ceiling:
            raise RangeError(f"mel {name} {value} is above the ceiling {ceiling}")
    samples = (mel.frames - 1) * mel.hop_length  # type: ignore[attr-defined]
    if samples > MAX_EXAMPLE_SAMPLES:
        raise RangeError(f"one example would be {samples} samples, above the ceiling "
                         f"{MAX_EXAMPLE_SAMPLES} (fewer frames or a shorter hop)")


def check_trainable_mel(mel: object) -> None:
    """ValueError unless a MelConfig is within the ceilings and has a shape the models
    train on: what every edge that creates a store or loads a model checks, so that a
    configuration precompute accepts is one `train` accepts too."""
    from gan.presets import check_shape  # pure data, no torch

    check_mel_size(mel)
    check_shape(mel.n_mels, mel.frames)  # type: ignore[attr-defined]
