"""Where precompute's per-file work runs: a thread pool (default) or worker processes.

Threads share one FeatureExtractor and start at once, but their per-file Python work is
serialised by the GIL: short clips on many cores gain little from more threads.
Worker processes are free of the GIL, but each is spawned fresh (safe with CUDA and MKL,
which a fork of a process that ran them is not) and imports torch first (~1.5 s here), so
they pay off on large data sets of short clips (see "Threads vs worker processes" in
BENCHMARKS.md). Processes take files in chunks and send the rows back by pickling; a
worker that dies breaks the pool, which `restart()` replaces (the precompute task then
re-runs the files in flight one by one to find the one that killed it).

No Prefect here: a spawned worker imports only this module and what it needs.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import torch

from gan.spectral import MelConfig
from storage.fault_points import fault_file, fault_point
from tasks.audio_features import Extracted, FeatureExtractor

POOLS = ("threads", "processes")
PROCESS_CHUNK_FILES = 16  # files per job sent to a worker process (amortises the IPC)

# one source file to extract: FeatureExtractor.extract's arguments
FileJob = tuple[str, str, str, int, int, str | None]


class ThreadRunner:
    """Jobs of one file each on a thread pool sharing one extractor."""

    files_per_job = 1

    def __init__(self, cfg: MelConfig, device: torch.device, workers: int) -> None:
        self._extractor = FeatureExtractor(cfg, device)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="precompute")

    def submit(self, jobs: Sequence[FileJob]) -> Future[list[Extracted]]:
        return self._pool.submit(_extract_all, self._extractor, list(jobs))

    def restart(self) -> None:
        raise AssertionError("a thread pool does not break")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ProcessRunner:
    """Jobs of PROCESS_CHUNK_FILES files on spawned worker processes, one extractor each."""

    files_per_job = PROCESS_CHUNK_FILES

    def __init__(self, cfg: MelConfig, device: torch.device, workers: int) -> None:
        self._args = (cfg.to_dict(), str(device), os.getpid())
        self._workers = workers
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self._workers, mp_context=mp.get_context("spawn"),
                                   initializer=_init_worker, initargs=self._args)

    def submit(self, jobs: Sequence[FileJob]) -> Future[list[Extracted]]:
        return self._pool.submit(_extract_in_worker, list(jobs))

    def restart(self) -> None:
        """A fresh pool after a worker died (which breaks the whole pool)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._start()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def extract_runner(pool: str, cfg: MelConfig, device: torch.device, workers: int
                   ) -> Iterator[ThreadRunner | ProcessRunner]:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    runner = (ThreadRunner if pool == "threads" else ProcessRunner)(cfg, device, workers)
    try:
        yield runner
    finally:
        runner.close()


def _extract_all(extractor: FeatureExtractor, jobs: list[FileJob]) -> list[Extracted]:
    return [extractor.extract(*job) for job in jobs]


# ------------------------------------------------------------- inside a worker process
_worker_extractor: FeatureExtractor | None = None


def _init_worker(cfg: dict[str, Any], device: str, parent: int) -> None:
    global _worker_extractor
    torch.set_num_threads(1)  # parallelism comes from the processes
    _worker_extractor = FeatureExtractor(MelConfig.from_dict(cfg), device)
    # a parent killed outright (SIGKILL) cannot shut the pool down: leave with it
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _extract_in_worker(jobs: list[FileJob]) -> list[Extracted]:
    assert _worker_extractor is not None, "worker not initialised"
    fault_point("worker_extract")
    for job in jobs:
        fault_file(job[1])
    return _extract_all(_worker_extractor, jobs)
