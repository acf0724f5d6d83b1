"""Resume after SIGKILL is exact: interrupted + resumed == uninterrupted, bit for bit."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from storage.checkpoints import list_checkpoints, load_checkpoint, load_latest

WORKER = Path(__file__).with_name("resume_worker.py")
EPOCHS = 4

pytestmark = pytest.mark.integration


def worker(ckpt_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), str(ckpt_dir), "--epochs", str(EPOCHS),
                           *args], capture_output=True, text=True, timeout=300)


def assert_same(a: object, b: object, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("straight")
    r = worker(d)
    assert r.returncode == 0, r.stderr
    state, path = load_latest(d)
    assert path.name == f"epoch_{EPOCHS:05d}.pt"
    return state


@pytest.mark.parametrize(("how", "arg", "left_at"), [
    ("--kill-at-step", "5", 2),   # mid epoch 3 (2 generator steps per epoch)
    ("--kill-in-save", "3", 2),   # while epoch 3's checkpoint is being written
])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path: Path, uninterrupted: dict,
                                                  how: str, arg: str, left_at: int) -> None:
    killed = worker(tmp_path, how, arg)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == f"epoch_{left_at:05d}.pt"
    if how == "--kill-in-save":  # the torn write is a hidden temp file, never a checkpoint
        assert [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-epoch_00003.pt")]

    resumed = worker(tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from epoch_{left_at:05d}.pt" in resumed.stdout
    final = load_checkpoint(tmp_path / f"epoch_{EPOCHS:05d}.pt")
    for key in ("generator", "critic", "ema_generator", "opt_g", "opt_d", "rng"):
        assert_same(uninterrupted[key], final[key], key)
    assert_same(uninterrupted, final)  # and everything else: epoch, step, scaler, meta
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
