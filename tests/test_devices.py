"""Which device a run uses, answered without torch where torch would only say "the CPU";
and how a worker process tells that the run that started it is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import gan.devices as devices
from clips.pools import process_start


def test_cpu_and_auto_without_a_gpu_driver_need_no_torch(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(devices, "gpu_driver_present", lambda: False)
    assert devices.device_name("cpu") == "cpu" and devices.device_name("auto") == "cpu"
    assert devices.device_name("cuda") is None and devices.device_name("cuda:1") is None
    monkeypatch.setattr(devices, "gpu_driver_present", lambda: True)
    assert devices.device_name("auto") is None  # torch decides
    assert devices.device_name("cpu") == "cpu"


def test_auto_agrees_with_torch_on_this_machine() -> None:
    import torch

    quick = devices.device_name("auto")
    assert quick is None or quick == str(devices.resolve_device("auto"))
    if torch.cuda.is_available():
        assert quick is None


def test_a_gone_or_zombie_process_has_no_start() -> None:
    assert process_start(os.getpid()) is not None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    while True:  # exited, not reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    assert process_start(child.pid) is None
    child.wait()
    assert process_start(child.pid) is None
