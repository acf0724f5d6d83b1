"""precompute --pool dask on real Dask clusters on loopback: a LocalCluster the run starts,
and an existing `dask scheduler` + `dask worker` pair (--dask-address). Rows come back to
the one store writer and equal the thread pool's; workers killed by the fault points of
storage.fault_points (deterministic, no timing) are survived or their file rejected."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect_services import base_env, free_port, stop, tail
from store_fixtures import assert_same_live_content
from test_precompute_crash import (
    MEL,
    MEL_ARGS,
    ROOT,
    api_env,
    cli,
    marked_processes,
    thirty_clips,
)

from storage.mel_store import MelStore

pytest.importorskip("distributed", reason="needs the scale extra: pip install -e '.[scale]'")

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness"),
              pytest.mark.timeout(600)]
DASK = str(Path(sys.executable).parent / "dask")


@pytest.fixture(scope="module")
def data_and_threads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Thirty short clips and the thread pool's store of them (the reference)."""
    from flows.precompute import precompute

    tmp = tmp_path_factory.mktemp("dask-data")

    def write(rel: str, seconds: float, sr: int, freq: float, root: Path) -> Path:
        import numpy as np
        import soundfile as sf

        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(seconds * sr)) / sr
        sf.write(p, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
        return p

    data = thirty_clips(tmp / "data", write)
    precompute(str(data), str(tmp / "threads"), mel=MEL, batch_size=5, workers=2)
    return data, tmp / "threads"


def run_cli(data: Path, store: Path, env: dict[str, str], *extra: str,
            timeout: float = 240) -> tuple[int, str, str]:
    p = cli(data, store, env, "--pool", "dask", *extra)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def test_local_cluster_rows_equal_threads_and_a_killed_worker_is_survived(
        tmp_path: Path, data_and_threads: tuple[Path, Path]) -> None:
    data, threads = data_and_threads
    # one worker SIGKILLed while decoding bee/03 (once): the scheduler re-runs its work
    marker = tmp_path / "killed-once"
    code, out, err = run_cli(data, tmp_path / "a", api_env(
        AUDIO_WGAN_KILL_ON_FILE="bee/03.wav", AUDIO_WGAN_KILL_ONCE=str(marker)), "--json")
    assert code == 0, err
    assert marker.exists(), "no worker was killed"
    summary = json.loads(out)
    assert summary["pool"] == "dask" and summary["workers"] == 2
    assert summary["rejected"] == [] and summary["files"] == 30
    assert_same_live_content(MelStore.open(tmp_path / "a"), MelStore.open(threads))


def test_a_file_that_kills_every_worker_is_rejected_and_the_run_goes_on(
        tmp_path: Path, data_and_threads: tuple[Path, Path]) -> None:
    data, threads = data_and_threads
    store = tmp_path / "w"
    code, out, err = run_cli(data, store, api_env(AUDIO_WGAN_KILL_ON_FILE="bee/03.wav"),
                             "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert [r["path"] for r in summary["rejected"]] == ["bee/03.wav"]
    assert summary["rejected"][0]["reason"].startswith("the worker process died while")
    assert summary["files"] == 29
    code, _, err = run_cli(data, store, api_env())  # the file is tried again
    assert code == 0, err
    assert_same_live_content(MelStore.open(store), MelStore.open(threads))


def test_workers_that_keep_dying_end_the_run_in_one_line(
        tmp_path: Path, data_and_threads: tuple[Path, Path]) -> None:
    data, threads = data_and_threads
    store = tmp_path / "k"
    code, _, err = run_cli(data, store, api_env(AUDIO_WGAN_KILL_AT="worker_extract:1"))
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("audio-wgan precompute: error: Dask workers keep dying"), err
    code, _, err = run_cli(data, store, api_env())
    assert code == 0, err
    assert_same_live_content(MelStore.open(store), MelStore.open(threads))


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_killed_run_takes_its_local_cluster_with_it(
        tmp_path: Path, data_and_threads: tuple[Path, Path]) -> None:
    data, threads = data_and_threads
    store, mark = tmp_path / "s", f"{os.getpid()}-{time.time_ns()}"
    code, _, _ = run_cli(data, store, api_env(AUDIO_WGAN_KILL_AT="rows_written:2",
                                              AUDIO_WGAN_TEST_MARK=mark))
    assert code == -signal.SIGKILL
    deadline = time.time() + 30  # worker processes notice their parent is gone
    while marked_processes(mark) and time.time() < deadline:
        time.sleep(0.2)
    assert marked_processes(mark) == [], "Dask worker processes outlived the killed run"
    code, _, err = run_cli(data, store, api_env())
    assert code == 0, err
    assert_same_live_content(MelStore.open(store), MelStore.open(threads))


# ----------------------------------------------------------------- an existing cluster
@contextmanager
def dask_cluster(tmp: Path, workers: int = 2, wrap: tuple[str, ...] = ()) -> Iterator[str]:
    """`dask scheduler` + `dask worker` (run under `wrap`, e.g. another mount namespace)
    on loopback; both stopped on exit, also when the test fails."""
    from distributed import Client

    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = base_env({"OMP_NUM_THREADS": "1"})
    procs: list[subprocess.Popen] = []
    logs = [open(tmp / "scheduler.log", "wb"), open(tmp / "worker.log", "wb")]
    try:
        procs.append(subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--no-dashboard"], stdout=logs[0], stderr=subprocess.STDOUT, env=env,
            cwd=ROOT, start_new_session=True))
        procs.append(subprocess.Popen(
            [*wrap, DASK, "worker", address, "--nworkers", str(workers), "--nthreads", "1",
             "--no-dashboard", "--host", "127.0.0.1"], stdout=logs[1],
            stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True))
        with Client(address, timeout=120) as client:
            try:
                client.wait_for_workers(workers, timeout=180)
            except TimeoutError:
                pytest.fail(f"workers did not join\n{tail(tmp / 'worker.log')}")
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc, grace=15)
        for log in logs:
            log.close()


def address_cli(data: Path, store: Path, address: str, *extra: str
                ) -> tuple[int, str, str]:
    cmd = [sys.executable, "-m", "audio_wgan.cli", "precompute", str(data), "--store",
           str(store), *MEL_ARGS, "--batch-size", "2", "--pool", "dask", "--dask-address",
           address, *extra]
    p = subprocess.run(cmd, cwd=ROOT, env=api_env(), capture_output=True, text=True,
                       timeout=240)
    return p.returncode, p.stdout, p.stderr


def test_existing_cluster_rows_equal_threads(tmp_path: Path,
                                             data_and_threads: tuple[Path, Path]) -> None:
    data, threads = data_and_threads
    with dask_cluster(tmp_path / "cluster") as address:
        code, out, err = address_cli(data, tmp_path / "e", address, "--json")
        assert code == 0, err
        summary = json.loads(out)
        assert summary["pool"] == "dask" and summary["workers"] == 2
        assert_same_live_content(MelStore.open(tmp_path / "e"), MelStore.open(threads))
        code, out, err = address_cli(data, tmp_path / "e", address, "--json")  # incremental
        assert code == 0, err
        assert json.loads(out)["processed_files"] == 0


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_unshare(), reason="`unshare --mount` (a worker that sees "
                    "another file system) is not permitted here")
def test_data_dir_missing_on_a_worker_is_one_line_and_removes_nothing(
        tmp_path: Path, data_and_threads: tuple[Path, Path]) -> None:
    """A worker on "another machine": its own mount namespace, where an empty tmpfs hides
    the folder holding DATA_DIR. The run stops in one line and no file is dropped."""
    data, _ = data_and_threads
    store = tmp_path / "m"
    code, _, err = run_cli(data, store, api_env())  # a complete store first
    assert code == 0, err
    before = MelStore.open(store)
    rows, sources = len(before), before.row_sources()
    for f in (data / "ant").iterdir():  # every file looks changed: all are read again
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1))
    hide = str(data.parent)
    wrap = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs none "{hide}" && exec "$@"', "sh")
    with dask_cluster(tmp_path / "cluster", wrap=wrap) as address:
        code, _, err = address_cli(data, store, address)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"audio-wgan precompute: error: {data} does not exist on Dask "
                           "worker tcp://127.0.0.1:"), err
    assert "DATA_DIR must be at the same path on every worker" in line
    after = MelStore.open(store)
    assert len(after) == rows and after.row_sources() == sources


def test_bad_dask_address_is_one_line(tmp_path: Path,
                                      data_and_threads: tuple[Path, Path]) -> None:
    data, _ = data_and_threads
    for address, expected in ((f"tcp://127.0.0.1:{free_port()}", "cannot reach the Dask "
                               "scheduler at tcp://127.0.0.1:"),
                              ("127.0.0.1:8786", "dask_address must look like tcp://")):
        code, _, err = address_cli(data, tmp_path / "x", address)
        assert code == 2, err
        assert err.strip().splitlines()[-1].startswith(
            f"audio-wgan precompute: error: {expected}"), err
        assert not (tmp_path / "x").exists()
    p = cli(data, tmp_path / "x", api_env(), "--dask-address", "tcp://127.0.0.1:8786")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2
    assert err.strip().splitlines()[-1] == (
        "audio-wgan precompute: error: --dask-address needs --pool dask")
