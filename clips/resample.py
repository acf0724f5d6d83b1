"""torchaudio's windowed-sinc resampling as a few dense matrix products.

`torchaudio.functional.resample` rebuilds its kernel on every call, which dominates for
short clips, and applies it as a strided convolution whose `n` output channels hold the
reduced ratio's `n` output phases (n outputs for every o inputs), each phase a row of
`2 * width + o` taps of which only ~2 * width are nonzero. Here the kernel is built once
per source rate (`SincPlan`) and laid out for matrix products:

- a ratio with few phases (44.1 -> 22.05 kHz is 2:1: one phase) takes `steps` ratio steps
  per row, BLOCK_OUTPUTS outputs at least (`blocked_kernel`): one product instead of a
  one-channel convolution;
- the rows' phases are split into groups of neighbours, each multiplying only the input
  columns where its phases have a nonzero tap (48 -> 22.05 kHz: 147 phases of ~27 nonzero
  taps in 348 columns; 4 groups of ~105 columns do a third of the multiplications).

Every output is the same sum of the same products as torchaudio's (within float rounding).
Rate pairs whose kernel would be huge (e.g. 44101 Hz, or a hostile header's rate) fall back
to band-limited FFT resampling.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torchaudio

MAX_SINC_KERNEL = 4_000_000  # elements; beyond this (odd rate pairs) resample via FFT
BLOCK_OUTPUTS = 16  # outputs per row of the resampling product (at least)
# a group of phases may span this many times the widest phase's nonzero taps: wider groups
# multiply more zeros, narrower ones make more (and smaller) products (4 was the fastest of
# 1, 2, 4, 8 here at 48 -> 22.05 kHz, ~2.3x torchaudio's convolution)
GROUP_SPAN = 4


@dataclass(frozen=True)
class PhaseGroup:
    """Outputs `first`..`first + weights.shape[1]` of a row: input columns `lo`.. times
    `weights` (columns, phases)."""

    first: int
    lo: int
    weights: torch.Tensor


@dataclass(frozen=True)
class SincPlan:
    """One rate pair's kernel as products: row r of the output holds `outputs` samples,
    from the padded input's columns r * stride + lo.. of each group."""

    o: int  # input samples per ratio step (reduced ratio o:n)
    n: int  # output samples per ratio step
    width: int  # torchaudio's left padding
    steps: int  # ratio steps per row
    columns: int  # input columns a row reads (the blocked kernel's width)
    groups: tuple[PhaseGroup, ...]

    @property
    def stride(self) -> int:
        return self.o * self.steps

    @property
    def outputs(self) -> int:
        return self.n * self.steps

    def out_length(self, t: int) -> int:
        """torchaudio's output length for `t` input samples, rounded as it rounds it (in
        float32: past 2**24 samples a float64 ceil gives other lengths, and so other
        example offsets)."""
        return int(torch.ceil(torch.as_tensor(self.n * t / self.o, dtype=torch.float32)))

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        t = int(wave.shape[-1])
        n_out = self.out_length(t)
        rows = -(-n_out // self.outputs)
        # torchaudio pads (width, width + o); more zeros on the right change nothing kept
        padded = torch.nn.functional.pad(wave.reshape(1, t),
                                         (self.width, self.width + self.stride + self.columns))[0]
        out = torch.empty(rows, self.outputs, dtype=torch.float32)
        for g in self.groups:
            cols = g.weights.shape[0]
            view = padded[g.lo:].as_strided((rows, cols), (self.stride, 1))
            out[:, g.first:g.first + g.weights.shape[1]] = view @ g.weights
        return out.reshape(-1)[:n_out]


def sinc_plan(orig: int, target: int) -> SincPlan | None:
    """torchaudio's kernel for `orig` -> `target` Hz laid out for products, or None where
    it would exceed MAX_SINC_KERNEL elements."""
    g = math.gcd(orig, target)
    o, n = orig // g, target // g
    width = math.ceil(6 * o / (min(o, n) * 0.99))  # torchaudio's, lowpass_filter_width=6
    if n * (2 * width + o) > MAX_SINC_KERNEL:
        return None
    sinc = torchaudio.transforms.Resample(orig, target)
    steps = max(1, -(-BLOCK_OUTPUTS // n))
    if steps * n * (2 * width + steps * o) > MAX_SINC_KERNEL:
        steps = 1  # an absurd rate (a hostile header): no bigger kernel
    kernel = blocked_kernel(sinc.kernel, o, steps)[:, 0]  # (outputs, columns)
    return SincPlan(o=o, n=n, width=sinc.width, steps=steps, columns=kernel.shape[1],
                    groups=phase_groups(kernel))


def phase_groups(kernel: torch.Tensor) -> tuple[PhaseGroup, ...]:
    """`kernel` (phases, columns) cut into runs of neighbouring phases whose nonzero
    columns together span at most GROUP_SPAN times the widest phase's."""
    nonzero = kernel != 0
    cols = torch.arange(kernel.shape[1])
    first = torch.where(nonzero, cols, kernel.shape[1]).amin(dim=1).tolist()
    last = torch.where(nonzero, cols, -1).amax(dim=1).tolist()
    first = [f if f <= lst else 0 for f, lst in zip(first, last, strict=True)]  # empty rows
    last = [max(lst, f) for f, lst in zip(first, last, strict=True)]
    limit = GROUP_SPAN * max(b - a + 1 for a, b in zip(first, last, strict=True))
    groups, start = [], 0
    lo, hi = first[0], last[0]
    for p in range(1, len(first) + 1):
        if p < len(first) and max(hi, last[p]) - min(lo, first[p]) + 1 <= limit:
            lo, hi = min(lo, first[p]), max(hi, last[p])
            continue
        groups.append(PhaseGroup(first=start, lo=lo,
                                 weights=kernel[start:p, lo:hi + 1].T.contiguous()))
        if p < len(first):
            start, lo, hi = p, first[p], last[p]
    return tuple(groups)


def blocked_kernel(kernel: torch.Tensor, o: int, blocks: int) -> torch.Tensor:
    """torchaudio's (n, 1, taps) sinc kernel (n outputs for every `o` inputs) as the kernel
    of `blocks` consecutive such steps: (blocks * n, 1, taps + (blocks - 1) * o), row
    b * n + c holding phase c's taps shifted by b * o inputs."""
    n, _, taps = kernel.shape
    if blocks == 1:
        return kernel.contiguous()
    out = kernel.new_zeros(blocks * n, 1, taps + (blocks - 1) * o)
    for b in range(blocks):
        out[b * n:(b + 1) * n, :, b * o:b * o + taps] = kernel
    return out


class Resampler:
    """Resampling to one target rate, a `SincPlan` built once per source rate (thread-safe:
    one instance serves every worker thread)."""

    def __init__(self, target: int) -> None:
        self.target = int(target)
        self._plans: dict[int, SincPlan | None] = {}
        self._lock = threading.Lock()

    def plan(self, orig: int) -> SincPlan | None:
        with self._lock:
            if orig not in self._plans:
                self._plans[orig] = sinc_plan(orig, self.target)
            return self._plans[orig]

    def __call__(self, wave: torch.Tensor, orig: int) -> torch.Tensor:
        if orig == self.target:
            return wave
        plan = self.plan(orig)
        if plan is not None:
            return plan(wave)
        t = int(wave.shape[-1])
        n_out = max(1, math.ceil(t * self.target / orig))
        spec = torch.fft.rfft(wave.double())
        keep = min(spec.shape[-1], n_out // 2 + 1)
        out = torch.fft.irfft(spec[..., :keep], n=n_out) * (n_out / t)
        return out.float()
