"""Which torch device a run uses: "auto" means the GPU when CUDA has one, else the CPU.

torch is imported only where torch must answer: on a machine without a GPU driver, "auto"
is the CPU (`device_name`) without the ~2-3 s that importing torch costs, so a precompute
whose work runs in worker processes never imports torch in the process that writes.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch's CUDA builds reach the GPU through the NVIDIA driver's libcuda.so.1; its ROCm
# builds through the kernel driver's /dev/kfd. Without either, torch.cuda has no device.
CUDA_DRIVER_LIBRARY = "libcuda.so.1"
ROCM_DEVICE_NODE = "/dev/kfd"


@functools.cache
def gpu_driver_present() -> bool:
    """Whether a GPU driver torch could use is installed (not whether a GPU works)."""
    if os.path.exists(ROCM_DEVICE_NODE):
        return True
    try:
        ctypes.CDLL(CUDA_DRIVER_LIBRARY)
    except OSError:
        return False
    return True


def device_name(name: str) -> str | None:
    """The device `name` resolves to when that is known without torch ("cpu" for "cpu",
    and for "auto" on a machine with no GPU driver), else None: ask `resolve_device`."""
    if name == "cpu" or (name == "auto" and not gpu_driver_present()):
        return "cpu"
    return None


def resolve_device(name: str | torch.device) -> torch.device:
    """"auto", "cpu", "cuda", "cuda:1", ... -> a torch.device; ValueError (one line) for a
    name torch does not know or a CUDA device this machine does not have."""
    import torch

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


def rank_capacity(device: str) -> tuple[int, str]:
    """How many data-parallel ranks this machine holds for `device`: one per CUDA device,
    else one per CPU core this process may run on."""
    if device_name(device) != "cpu":
        dev = resolve_device(device)
        if dev.type == "cuda":
            import torch

            return torch.cuda.device_count(), "CUDA device(s)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return cores or os.cpu_count() or 1, "CPU core(s)"


def nproc_problem(nproc: int, device: str, force: bool) -> str:
    """Why `nproc` ranks would overrun this machine ("" when they fit, or when forced):
    each rank holds a model, its optimiser and a share of the data, so 64 ranks on 2 cores
    exhaust the memory of the whole machine before the first step."""
    if nproc <= 1 or force:
        return ""
    try:
        have, what = rank_capacity(device)
    except ValueError as exc:  # a CUDA device this machine does not have
        return str(exc)
    if nproc <= have:
        return ""
    return (f"--nproc {nproc} asks for more ranks than this machine has {what} ({have}); "
            "pass --force-nproc (force_nproc) to launch them anyway")
