"""The log-mel configuration as plain data: importable without torch, so that reading a
store's description (`audio-wgan store-info`) or checking the options of a new one starts
at once. `gan.spectral` re-exports everything here beside the transforms that use it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

LONG_CLIP_POLICIES = ("split", "crop")
TAIL_POLICIES = ("end-grid", "end", "pad")
PAD_POLICIES = ("noise", "loop", "zero-end")
# what a store made before a policy existed did; such stores keep it (see from_dict)
LEGACY_POLICIES = {"tail_policy": "pad", "pad_policy": "zero-end"}
# "end-grid" / "end": a remainder shorter than this share of an example is dropped
MIN_TAIL_FRACTION = 0.25


@dataclass(frozen=True)
class MelConfig:
    """Log-mel feature parameters. Defaults are the seed's 128x256 at 22.05 kHz.

    How clips become examples (recorded in the store, so an existing store keeps its own):
    - `long_clip_policy`: clips longer than one example are "split" into several or
      "crop"ped to the first;
    - `tail_policy` (split clips): "end-grid" (default) ends the last example within one
      hop of the clip's end, starting on the frame grid of the examples before (at most
      hop_length - 1 samples, 11.6 ms at the defaults, are left out), so that the
      overlapping examples share their STFT frames (gan.spectral.LogMel.examples: a 4 s
      clip costs ~365 frames instead of 512); it drops a remainder shorter than
      MIN_TAIL_FRACTION of an example. "end" (stores made before "end-grid") ends the last
      example exactly at the clip's end; "pad" (stores made before "end") zero-pads the
      remainder to a whole example when at least half of it is audio. Zero padding is
      learnt: the generator copies the band of digital silence (bench/bench_quality.py);
    - `pad_policy` (clips shorter than one example): "noise" (default) pads with noise at
      the clip's own noise floor, "loop" repeats the clip, "zero-end" pads with zeros. On
      spoken digits "noise" trained the generator closest to its real rows and "zero-end"
      farthest (`bench/bench_quality.py --pad-policies`, BENCHMARKS.md).
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 128
    frames: int = 256
    f_min: float = 0.0
    f_max: float | None = None
    long_clip_policy: str = "split"
    # hop between split examples, in frames (defaults to one whole example: no overlap)
    split_hop_frames: int | None = None
    pad_policy: str = "noise"
    tail_policy: str = "end-grid"

    def __post_init__(self) -> None:
        """The configuration checked as a whole, so no store is made from a bad one."""
        if self.long_clip_policy not in LONG_CLIP_POLICIES:
            raise ValueError(
                f"long_clip_policy must be 'split' or 'crop', not {self.long_clip_policy!r}")
        if self.tail_policy not in TAIL_POLICIES:
            raise ValueError(f"tail_policy must be one of {TAIL_POLICIES}, "
                             f"not {self.tail_policy!r}")
        if self.pad_policy not in PAD_POLICIES:
            raise ValueError(f"pad_policy must be one of {PAD_POLICIES}, "
                             f"not {self.pad_policy!r}")
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.frames < 2:
            raise ValueError("frames must be at least 2")
        if self.split_hop_frames is not None and self.split_hop_frames <= 0:
            raise ValueError("split_hop_frames must be positive")
        nyquist = self.sample_rate / 2.0
        if not (math.isfinite(self.f_min) and 0.0 <= self.f_min < nyquist):
            raise ValueError(f"f_min must be in [0, sample_rate/2 = {nyquist:g}) Hz, "
                             f"got {self.f_min}")
        if self.f_max is not None and not (math.isfinite(self.f_max)
                                           and self.f_min < self.f_max <= nyquist):
            raise ValueError(f"f_max must be above f_min ({self.f_min:g} Hz) and at most "
                             f"sample_rate/2 = {nyquist:g} Hz, got {self.f_max}")
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(f"n_mels ({self.n_mels}) must be at most n_fft/2 + 1 "
                             f"({self.n_fft // 2 + 1}) frequency bins")

    @property
    def segment_samples(self) -> int:
        """Samples that give exactly `frames` frames with a centred STFT."""
        return (self.frames - 1) * self.hop_length

    @property
    def hop_samples(self) -> int:
        return (self.split_hop_frames or self.frames) * self.hop_length

    @property
    def seconds(self) -> float:
        return self.segment_samples / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MelConfig:
        """A saved config; a policy it does not name is the one used before it existed."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**LEGACY_POLICIES, **{k: v for k, v in d.items() if k in names}})
