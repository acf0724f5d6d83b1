"""Where precompute's per-file work runs: a thread pool (default), worker processes or a
Dask cluster.

Threads share one FeatureExtractor and start at once, but their per-file Python work is
serialised by the GIL: short clips on many cores gain little from more threads.
Worker processes are free of the GIL; they are forked from a forkserver that imports torch
once (~2-3 s here) and never runs it (safe with CUDA and MKL, which a fork of a process
that ran them is not), so they pay off on large data sets of short clips (see "Threads vs
worker processes" in BENCHMARKS.md), and the process that writes the store never imports
torch. Processes take files in chunks and send the rows back by pickling; a
worker that dies breaks the pool, which `restart()` replaces (the precompute task then
re-runs the files in flight one by one to find the one that killed it).

A Dask cluster (`distributed`, the `scale` extra) is either a LocalCluster of worker
processes this run starts or an existing one (`address`); `Client.get_executor()` gives
ordinary futures, so the precompute loop consumes them as it does the pools'. Its
scheduler re-runs the work of a worker that died on another one; a job whose workers died
`allowed-failures` + 1 times comes back as KilledWorker (the cluster goes on). The workers
read the source files themselves, at the paths the scan found: DATA_DIR must be at the
same path on every worker.

No Prefect here: a worker process imports only this module and what it needs.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from clips.names import reason_text
from clips.scan import PrecomputeError
from gan.limits import POOLS
from gan.mel_config import MelConfig
from storage.fault_points import fault_file, fault_point

if TYPE_CHECKING:  # torch comes with the extractor, when a file is first decoded
    from distributed import Client, LocalCluster

    from clips.features import FeatureExtractor
    from clips.outcome import Extracted

# "auto": worker processes once this many files are to be extracted on the CPU with more
# than one worker, threads below it. Measured here (2 cores, bench_workers and
# bench_precompute_us8k): threads won at 3,000 FSDD digits (0.88x) and 400 ESC-10 clips,
# processes at 9,000 digits (1.28x) and 9,800 UrbanSound8K-like clips (~1.13x, 7 of 8
# pairs; then spawned, each importing torch, ~1.5 s): starting processes (now forked from a
# forkserver that imports torch once, ~2-3 s here) pays off only on big jobs.
AUTO_PROCESSES_FILES = 5000


def default_workers() -> int:
    """One per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def resolve_pool(pool: str, files: int, workers: int, device: str) -> str:
    """The pool "auto" stands for with this many files, workers and mel device."""
    if pool != "auto":
        return pool
    big = files >= AUTO_PROCESSES_FILES and workers > 1 and device == "cpu"
    return "processes" if big else "threads"
PROCESS_CHUNK_FILES = 16  # files per job sent to a worker process (amortises the IPC)
# a LocalCluster's scheduler re-runs a job whose worker died this many times before it
# gives up on it (KilledWorker); an existing cluster keeps its own setting (default 3)
DASK_ALLOWED_FAILURES = 1
DASK_CONNECT_TIMEOUT_S = 10

# one source file to extract: FeatureExtractor.extract's arguments
FileJob = tuple[str, str, str, int, int, str | None]


class JobLost(Exception):
    """A job's worker died (a process pool breaks with it; on Dask, the job's workers died
    allowed-failures + 1 times)."""


class SourceMissingOnWorker(PrecomputeError):
    """DATA_DIR is not there on a Dask worker (a file merely deleted is "vanished")."""


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Parallelism comes from the file pool; intra-op threads on per-file sized ops only
    contend (measured up to 30x slower on a busy 2-core machine)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class ThreadRunner:
    """Jobs of one file each on a thread pool sharing one extractor (torch on one intra-op
    thread while it lives)."""

    files_per_job = 1
    noun = "worker threads"

    def __init__(self, cfg: MelConfig, device: str, workers: int) -> None:
        self.workers = workers
        from clips.features import FeatureExtractor

        self._extractor = FeatureExtractor(cfg, device)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="precompute")
        self._threads = torch_threads(1)
        self._threads.__enter__()

    def submit(self, jobs: Sequence[FileJob]) -> Future[list[Extracted]]:
        return self._pool.submit(_extract_all, self._extractor, list(jobs))

    def result(self, future: Future[list[Extracted]]) -> list[Extracted]:
        return future.result()

    def restart(self) -> None:
        raise AssertionError("a thread pool does not break")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._threads.__exit__(None, None, None)


# Worker processes are forked from Python's forkserver, a fresh interpreter (never a fork of
# this process, whose threads and MKL/CUDA state a fork must not copy) that imports these
# modules (torch among them) once and runs no torch op: every worker then starts at once,
# and a pool started again after a worker died imports nothing again.
WORKER_PRELOAD = ["clips.features"]


def warm_worker_processes(pool: str, workers: int | None, device: str) -> bool:
    """Start the forkserver now (it imports WORKER_PRELOAD, torch among them, ~2-3 s, in
    its own process) when this run may use worker processes: a command that waits for its
    Prefect server fills the idle core with it, and the pool then starts at once. Whether
    it was started."""
    from gan.devices import device_name

    n = default_workers() if workers is None else workers
    if not (pool == "processes"
            or (pool == "auto" and n > 1 and device_name(device) == "cpu")):
        return False
    from multiprocessing import forkserver

    mp.get_context("forkserver").set_forkserver_preload(WORKER_PRELOAD)
    forkserver.ensure_running()
    return True


class ProcessRunner:
    """Jobs of PROCESS_CHUNK_FILES files on worker processes, one extractor each."""

    files_per_job = PROCESS_CHUNK_FILES
    noun = "worker processes"

    def __init__(self, cfg: MelConfig, device: str, workers: int) -> None:
        self._args = (cfg.to_dict(), device)
        self.workers = workers
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(WORKER_PRELOAD)  # (kept by a forkserver already running)
        # the forkserver's environment is the one it started with: a worker takes this
        # process's, as a spawned one would (limits, fault points, thread settings)
        return ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(*self._args, dict(os.environ), os.getpid()))

    def submit(self, jobs: Sequence[FileJob]) -> Future[list[Extracted]]:
        return self._pool.submit(_extract_in_worker, list(jobs))

    def result(self, future: Future[list[Extracted]]) -> list[Extracted]:
        try:
            return future.result()
        except BrokenProcessPool:
            raise JobLost from None

    def restart(self) -> None:
        """A fresh pool after a worker died (which breaks the whole pool)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._start()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskRunner:
    """Jobs of PROCESS_CHUNK_FILES files on a Dask cluster: a LocalCluster of `workers`
    single-threaded worker processes on this machine, or the cluster at `address`
    (its own workers; `workers` is then unused)."""

    files_per_job = PROCESS_CHUNK_FILES
    noun = "Dask workers"

    def __init__(self, cfg: MelConfig, device: str, workers: int,
                 address: str | None = None) -> None:
        import dask
        from distributed import Client, LocalCluster

        self._cluster: LocalCluster | None = None
        self._client: Client
        self._config = contextlib.ExitStack()
        if address is None:
            # held while the cluster lives: the cluster reads lost-worker-timeout whenever a
            # worker is lost, and by default drops a worker whose nanny has not restarted
            # it within 15 s (a busy machine) for good, which can leave no worker at all
            self._config.enter_context(dask.config.set({
                "distributed.scheduler.allowed-failures": DASK_ALLOWED_FAILURES,
                "distributed.deploy.lost-worker-timeout": "1 day"}))
            try:
                self._cluster = LocalCluster(n_workers=workers, threads_per_worker=1,
                                             processes=True, host="127.0.0.1",
                                             dashboard_address=None)
            except BaseException:
                self._config.close()
                raise
            self._client = Client(self._cluster)
        else:
            try:
                self._client = Client(address, timeout=DASK_CONNECT_TIMEOUT_S)
            except OSError as exc:  # TimeoutError included
                raise PrecomputeError(f"cannot connect to the Dask scheduler at {address}: "
                                      f"{reason_text(exc)}") from None
        self.workers = sum(self._client.nthreads().values()) or workers
        # pure=False: a job sent again (after KilledWorker) is new work, not a cached key
        self._executor = self._client.get_executor(pure=False)
        self._args = (cfg.to_dict(), device)

    def submit(self, jobs: Sequence[FileJob]) -> Future[list[Extracted]]:
        return self._executor.submit(_extract_on_dask, *self._args, list(jobs))

    def result(self, future: Future[list[Extracted]]) -> list[Extracted]:
        from distributed.scheduler import KilledWorker

        try:
            return future.result()
        except KilledWorker:
            raise JobLost from None

    def restart(self) -> None:
        """Nothing to do: the cluster goes on (its nannies restart dead workers)."""

    def close(self) -> None:
        self._executor.shutdown(wait=False)
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._config.close()


def dask_available() -> bool:
    """`distributed` is in the optional `scale` extra."""
    import importlib.util

    return importlib.util.find_spec("distributed") is not None


Runner = ThreadRunner | ProcessRunner | DaskRunner


@contextlib.contextmanager
def extract_runner(pool: str, cfg: MelConfig, device: str, workers: int,
                   dask_address: str | None = None) -> Iterator[Runner]:
    if pool not in POOLS[1:]:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    runner: Runner
    if pool == "dask":
        runner = DaskRunner(cfg, device, workers, dask_address)
    else:
        runner = (ThreadRunner if pool == "threads" else ProcessRunner)(cfg, device, workers)
    try:
        yield runner
    finally:
        runner.close()


# glibc's malloc serves blocks above a (self-adjusting) threshold with fresh mmaps and
# trims freed memory back to the OS, so every clip's MB-sized buffers (samples, spectra)
# were page-faulted in again: 2.6-4.1 million minor faults in one 9,800-clip run on worker
# processes, 0.3 million with these fixed settings (`mallopt`; M_MMAP_THRESHOLD = -3,
# M_TRIM_THRESHOLD = -1). The memory kept is what the busiest clip needed, not more.
MALLOC_MMAP_THRESHOLD = 64 << 20
MALLOC_TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Set the thresholds above in this process (glibc only; elsewhere nothing happens).
    Only in the worker processes a run spawns: never in the caller's process or on the
    workers of a user's Dask cluster, whose memory settings are theirs."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mmap_set = bool(mallopt(-3, MALLOC_MMAP_THRESHOLD))  # (older glibc: at most 32 MiB)
    return bool(mallopt(-1, MALLOC_TRIM_THRESHOLD)) and mmap_set


def _extract_all(extractor: FeatureExtractor, jobs: list[FileJob]) -> list[Extracted]:
    return [extractor.extract(*job) for job in jobs]


# ------------------------------------------------------------- inside a worker process
_worker_extractor: FeatureExtractor | None = None


def _init_worker(cfg: dict[str, Any], device: str, environ: dict[str, str], caller: int
                 ) -> None:
    global _worker_extractor
    import torch

    from clips.features import FeatureExtractor

    os.environ.clear()
    os.environ.update(environ)
    torch.set_num_threads(1)  # parallelism comes from the processes
    keep_freed_memory()
    _worker_extractor = FeatureExtractor(MelConfig.from_dict(cfg), device)
    # a caller killed outright (SIGKILL) cannot shut the pool down, and the forkserver
    # waits for its workers: leave with the caller
    threading.Thread(target=_exit_with_caller, args=(caller,), daemon=True).start()


def _exit_with_caller(pid: int) -> None:
    born = process_start(pid)
    while born is not None and process_start(pid) == born:
        time.sleep(0.5)
    os._exit(1)


def process_start(pid: int) -> str | None:
    """When process `pid` started (/proc's start time: a reused pid differs), or None
    once it is gone or a zombie (killed, not yet reaped by its parent). Without /proc:
    whether a signal reaches it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        if os.path.exists("/proc/self/stat"):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return "alive"
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # state is field 3, starttime field 22
    return None if fields[0] in ("Z", "X") else fields[19]


def _extract_in_worker(jobs: list[FileJob]) -> list[Extracted]:
    assert _worker_extractor is not None, "worker not initialised"
    fault_point("worker_extract")
    for job in jobs:
        fault_file(job[1])
    return _extract_all(_worker_extractor, jobs)


# ------------------------------------------------------------- on a Dask worker
_dask_extractors: dict[tuple[str, str], FeatureExtractor] = {}
_dask_lock = threading.Lock()


def _extract_on_dask(cfg: dict[str, Any], device: str, jobs: list[FileJob]) -> list[Extracted]:
    """One job on a Dask worker (one extractor per worker process and mel config)."""
    key = (repr(sorted(cfg.items())), device)
    with _dask_lock:
        extractor = _dask_extractors.get(key)
        if extractor is None:
            import torch

            from clips.features import FeatureExtractor

            torch.set_num_threads(1)  # parallelism comes from the workers
            extractor = _dask_extractors[key] = FeatureExtractor(MelConfig.from_dict(cfg),
                                                                 device)
    fault_point("worker_extract")
    for job in jobs:
        fault_file(job[1])
    outs = _extract_all(extractor, jobs)
    for job, out in zip(jobs, outs, strict=True):
        if out.status == "vanished":
            _require_data_dir(job)
    return outs


def _require_data_dir(job: FileJob) -> None:
    """A file missing on a worker is deleted only if DATA_DIR itself is there."""
    abs_path, rel = job[0], job[1]
    root = abs_path[:-len(rel)] if abs_path.endswith(rel) else os.path.dirname(abs_path)
    root = root.rstrip(os.sep) or os.sep
    if not os.path.isdir(root):
        from distributed import get_worker

        raise SourceMissingOnWorker(
            f"{root} does not exist on Dask worker {get_worker().address}: the workers "
            "read the source files themselves, so DATA_DIR must be at the same path on "
            "every worker (a shared file system)")


def check_dask_address(address: str) -> None:
    """A scheduler address that is well formed and answers, before any store is touched."""
    import socket
    from urllib.parse import urlsplit

    try:
        url = urlsplit(address)
        scheme, host, port = url.scheme, url.hostname, url.port
    except ValueError:
        scheme = host = port = None
    if scheme not in ("tcp", "tls") or not host or not port:
        raise PrecomputeError(f"dask_address must look like tcp://HOST:PORT, not {address!r}")
    try:
        socket.create_connection((host, port), timeout=DASK_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise PrecomputeError(f"cannot reach the Dask scheduler at {address}: "
                              f"{reason_text(exc.strerror or exc)}") from None
