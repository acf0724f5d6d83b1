"""Exponential moving average of the generator's weights.

GAN generators oscillate; the average over recent steps gives visibly cleaner samples,
so the EMA copy (not the raw generator) is what is rendered and registered. BatchNorm
running statistics are buffers, not weights: they are copied as they are, because an
average of running averages means nothing.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds `module`, an eval-mode copy of a network whose weights trail the source's.

    The effective decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so
    short runs are not dominated by the initial weights.
    """

    def __init__(self, source: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(source).eval().requires_grad_(False)

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        """ema <- d * ema + (1 - d) * source for parameters; buffers are copied."""
        d = self.current_decay()
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in source.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for b_ema, b_src in zip(self.module.buffers(), source.buffers(), strict=True):
            b_ema.copy_(b_src)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates,
                "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
