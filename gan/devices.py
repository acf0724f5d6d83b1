"""Which torch device a run uses: "auto" means the GPU when CUDA has one, else the CPU."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """"auto", "cpu", "cuda", "cuda:1", ... -> a torch.device; ValueError (one line) for a
    name torch does not know or a CUDA device this machine does not have."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r} asked for but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(name)!r} asked for but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return dev
