"""SIGKILL a precompute at several moments, re-run: the live store equals a clean run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from store_fixtures import assert_same_live_content

from storage.mel_store import MelStore
from storage.store_manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
MEL_ARGS = ["--sample-rate", "8000", "--n-fft", "256", "--hop-length", "64", "--n-mels", "32",
            "--frames", "32"]
MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "frames": 32}

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


def api_env(**extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())  # the session's test server
    env.pop("AUDIO_WGAN_KILL_AT", None)
    env.update(extra)
    return env


def cli(data: Path, store: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "audio_wgan.cli", "precompute", str(data), "--store",
           str(store), *MEL_ARGS, "--batch-size", "2", "--workers", "2", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def committed_files(store: Path) -> int:
    try:
        m = read_manifest(store)
    except ValueError:
        return 0
    return len(m.files) if m else 0


def thirty_clips(root: Path, write_tone: Callable[..., Path]) -> Path:
    for c in ("ant", "bee", "cat"):
        for i in range(10):
            write_tone(f"{c}/{i:02d}.wav", seconds=0.5, sr=16000, freq=200 + 37 * i + 400 *
                       len(c), root=root)
    return root


def test_sigkill_at_several_moments_then_rerun(tmp_path: Path,
                                               write_tone: Callable[..., Path]) -> None:
    from flows.precompute import precompute

    data = thirty_clips(tmp_path / "data", write_tone)
    precompute(str(data), str(tmp_path / "clean"), mel=MEL, batch_size=5, workers=1)
    clean = MelStore.open(tmp_path / "clean")
    assert len(clean) == 60
    store = tmp_path / "s"

    # 1. rows of the 3rd batch written, its manifest not committed
    p = cli(data, store, api_env(AUDIO_WGAN_KILL_AT="rows_written:3"))
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL
    st = MelStore.open(store)
    # at most the two committed batches of two files (commits may be coalesced)
    assert len(st.files()) in (0, 2, 4) and len(st) == 2 * len(st.files())
    # the rows written past the commit rewrote its last chunk: the committed ones verify
    assert st.verify()["ok"] and st.verify()["without_checksum"] == 0
    if len(st):  # statistics of a partial store are computed on the fly
        mels = st.load()[0].astype(np.float64)
        np.testing.assert_allclose(st.stats()[0], mels.mean(axis=(0, 2)), rtol=1e-5)

    # 2. mid-run, with more batches appended (and some committed: commits may be coalesced)
    # than the first run got to: killed as the 7th batch asks for its commit, whatever the
    # machine's speed (a fault point, not a timer racing the run)
    had = committed_files(store)
    p = cli(data, store, api_env(AUDIO_WGAN_KILL_AT="commit_requested:7"))
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL
    # the first batch's commit is never coalesced; the 7th batch is not yet committed
    assert had + 2 <= len(MelStore.open(store).files()) <= had + 12 < 30
    assert MelStore.open(store).verify()["ok"]

    # 3. every row committed, killed while finishing (statistics not yet committed)
    p = cli(data, store, api_env(AUDIO_WGAN_KILL_AT="finalize:1"))
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL
    assert_same_live_content(MelStore.open(store), clean)  # stale stats recomputed

    # 4. a normal re-run finishes the job; the store equals the uninterrupted one
    p = cli(data, store, api_env())
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    st = MelStore.open(store)
    assert_same_live_content(st, clean)
    assert st.manifest.stats["fingerprint"] == st.fingerprint
    assert st.verify()["ok"] and st.verify()["without_checksum"] == 0
    assert not list(store.rglob("*.partial")) and not list(store.glob(".tmp-*"))


def test_lock_of_a_killed_holder_is_released(tmp_path: Path,
                                             write_tone: Callable[..., Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main

    write_tone("c/a.wav", seconds=0.5, root=tmp_path / "d")
    store = tmp_path / "s"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from storage.store_lock import StoreLock; "
         "StoreLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)",
         str(store)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["precompute", str(tmp_path / "d"), "--store", str(store), *MEL_ARGS]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert f"being written by another precompute (pid {holder.pid})" in err[0]
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0  # the kernel dropped the dead holder's lock
    assert len(MelStore.open(store)) == 2


def marked_processes(mark: str) -> list[int]:
    """Live processes whose environment carries AUDIO_WGAN_TEST_MARK=mark."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                env = (d / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"AUDIO_WGAN_TEST_MARK={mark}".encode() in env:
                found.append(int(d.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_worker_processes_die_with_a_killed_run_and_match_threads(
        tmp_path: Path, write_tone: Callable[..., Path]) -> None:
    from flows.precompute import precompute

    data = thirty_clips(tmp_path / "data", write_tone)
    threads = precompute(str(data), str(tmp_path / "threads"), mel=MEL, batch_size=5,
                         workers=2)
    store, mark = tmp_path / "s", f"{os.getpid()}-{time.time_ns()}"
    p = cli(data, store, api_env(AUDIO_WGAN_KILL_AT="rows_written:2",
                                 AUDIO_WGAN_TEST_MARK=mark), "--pool", "processes")
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL
    deadline = time.time() + 60  # a bound, not a race: workers notice within a second
    while marked_processes(mark) and time.time() < deadline:
        time.sleep(0.2)
    assert marked_processes(mark) == [], "worker processes outlived the killed run"
    p = cli(data, store, api_env(), "--pool", "processes", "--json")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert '"pool": "processes"' in out
    assert_same_live_content(MelStore.open(store), MelStore.open(tmp_path / "threads"))
    assert threads["pool"] == "threads"

    # a file that kills the worker decoding it (as a crashing decoder would) is found by
    # re-running the files in flight one by one, rejected with a reason, and the run goes on
    store = tmp_path / "w"
    p = cli(data, store, api_env(AUDIO_WGAN_KILL_ON_FILE="bee/03.wav"), "--pool",
            "processes", "--json")
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    summary = json.loads(out)
    assert [r["path"] for r in summary["rejected"]] == ["bee/03.wav"]
    assert summary["rejected"][0]["reason"].startswith("the worker process died while")
    assert summary["files"] == 29
    p = cli(data, store, api_env(), "--pool", "processes")  # the file is tried again
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert_same_live_content(MelStore.open(store), MelStore.open(tmp_path / "threads"))

    # workers that keep dying whatever they run: one line, the whole rows kept, re-runnable
    store = tmp_path / "k"
    p = cli(data, store, api_env(AUDIO_WGAN_KILL_AT="worker_extract:1"), "--pool",
            "processes")
    _, err = p.communicate(timeout=180)
    assert p.returncode == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("audio-wgan precompute: error: worker processes keep dying"), err
    p = cli(data, store, api_env(), "--pool", "processes")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert_same_live_content(MelStore.open(store), MelStore.open(tmp_path / "threads"))
