"""Shared fixtures: paths to ../shared data, small generated audio, isolated MLflow/Prefect."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (ESC-10 and FSDD), read in place, never copied."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} missing in CI")
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture
def write_tone(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a sine tone file and return its path."""

    def _write(rel: str, seconds: float = 1.0, sr: int = 16000, freq: float = 440.0,
               channels: int = 1, fmt: str | None = None, root: Path | None = None) -> Path:
        path = (root or tmp_path) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        n = max(1, int(seconds * sr))
        t = np.arange(n) / sr
        x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
        if channels > 1:
            x = np.stack([x * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1)
        sf.write(path, x, sr, format=fmt)
        return path

    return _write


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for the whole test session (real server on loopback)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite-backed MLflow tracking + registry in a temp dir (copied from a database
    migrated once per session: a real MLflow database, minus ~10 s of migrations per test)."""
    from registry_fixtures import fresh_mlflow

    return fresh_mlflow(tmp_path, monkeypatch)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models on a 2-core machine run 10-50x faster with one intra-op thread."""
    from registry_fixtures import one_torch_thread

    yield from one_torch_thread()


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (a disk that fills up for real: ENOSPC from the kernel), mounted
    where the test can (root, a kernel that allows it); skipped elsewhere."""
    import subprocess

    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
