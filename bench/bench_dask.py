"""Precompute on a Dask cluster beside threads and worker processes.

    .venv/bin/python -m bench.bench_dask [--datasets fsdd esc10] [--reps 1] [--out FILE]

The whole `precompute` flow into a fresh store (Prefect, hashing, Zarr writes included) on
FSDD, ESC-10 and FSDD three times over (9000 links to its files under new names), four
ways, alternating within each repetition:
- threads (the default) and processes (`pool="processes"`, spawned afresh by each run);
- dask, local: `pool="dask"` without an address, a LocalCluster of as many single-threaded
  worker processes started (and closed) by each run;
- dask, existing: `dask_address=` a `dask scheduler` + `dask worker` pair started once
  before the runs (as a user's cluster is), its start-up (until its workers have imported
  the extraction code) timed separately.
Every way uses one worker per core; rows return to the flow's one store writer. Writes
bench/results/dask.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RESULT = Path(__file__).resolve().parent / "results" / "dask.md"
ROOT = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).parent / "dask")
WAYS = ("threads", "processes", "dask, local", "dask, existing")


@contextmanager
def existing_cluster(workers: int, tmp: Path) -> Iterator[tuple[str, float]]:
    """(address, start-up seconds) of a scheduler + `workers` single-threaded workers."""
    import socket

    from distributed import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, cwd=ROOT,
                              stdout=open(tmp / "scheduler.log", "wb"),
                              stderr=subprocess.STDOUT),
             subprocess.Popen([DASK, "worker", address, "--nworkers", str(workers),
                               "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                              env=env, cwd=ROOT, stdout=open(tmp / "worker.log", "wb"),
                              stderr=subprocess.STDOUT)]
    try:
        with Client(address, timeout=120) as client:
            client.wait_for_workers(workers, timeout=300)
            client.run(exec, "import clips.pools")  # what a first job imports
        yield address, time.perf_counter() - t0
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def flow_seconds(data: Path, store: Path, workers: int, way: str, address: str) -> float:
    from flows.precompute import precompute

    kw: dict = {"workers": workers, "pool": way.split(",")[0]}
    if way == "dask, existing":
        kw = {"pool": "dask", "dask_address": address}
    t0 = time.perf_counter()
    s = precompute(str(data), str(store), **kw)
    assert s["processed_files"] > 0 and s["workers"] == workers, s
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    from bench.bench_precompute import SHARED, link_subset, list_files
    from bench.bench_workers import linked_copies
    from clips.pools import default_workers

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--datasets", nargs="+", default=["fsdd", "esc10"])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    workers = default_workers()
    # FSDD x3 first: the comparison that matters most on a machine shared with other jobs
    sets = [("fsdd", 3)] * ("fsdd" in args.datasets) + [(n, 1) for n in args.datasets]
    rows: list[tuple[str, int, dict[str, float]]] = []
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with existing_cluster(workers, tmp) as (address, startup):
            print(f"  existing cluster up in {startup:.2f}s", flush=True)
            for name, copies in sets:
                files = list_files(SHARED / name)
                label = name if copies == 1 else f"{name} x{copies}"
                data = (link_subset(files, tmp / f"{name}-data") if copies == 1 else
                        linked_copies(files, tmp / f"{name}-x{copies}", copies))
                times: dict[str, list[float]] = {w: [] for w in WAYS}
                for r in range(args.reps):
                    for way in WAYS:
                        store = tmp / f"{label}-{way.replace(', ', '-')}-{r}.zarr"
                        times[way].append(flow_seconds(data, store, workers, way, address))
                    print(f"  {label}: " + ", ".join(f"{w} {t[-1]:.2f}s"
                                                    for w, t in times.items()), flush=True)
                rows.append((label, len(files) * copies,
                             {w: statistics.median(t) for w, t in times.items()}))
                write(args, argv, workers, startup, rows, (load0, os.getloadavg()[0]))
    return 0


def write(args: argparse.Namespace, argv: list[str] | None, workers: int, startup: float,
          rows: list[tuple[str, int, dict[str, float]]], load: tuple[float, float]) -> None:
    """The result so far (rewritten after each data set: a cut-short run still reports)."""
    cmd = " ".join([".venv/bin/python -m bench.bench_dask",
                    *(sys.argv[1:] if argv is None else argv)])
    lines = [
        "# Precompute on a Dask cluster",
        "",
        f"Command: `{cmd}`",
        "",
        f"The whole `precompute` flow into a fresh store, {workers} workers every way "
        "(threads; spawned worker processes; a Dask LocalCluster of single-threaded worker "
        "processes started by the run; an existing `dask scheduler` + `dask worker` pair "
        f"reached with `dask_address`), medians of {args.reps} alternating "
        f"repetition(s), seconds. The existing cluster took {startup:.2f} s to start "
        "(scheduler, workers, and their import of the extraction code), paid once and not "
        "in its column; the local cluster's start-up is in its own.",
        "",
        "| data set | files | threads | processes | dask, local | dask, existing | "
        "processes / dask, existing | threads / dask, existing | processes / dask, local |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, n, t in rows:
        ex, loc = t["dask, existing"], t["dask, local"]
        lines.append(f"| {label} | {n} | {t['threads']:.2f} | {t['processes']:.2f} | "
                     f"{loc:.2f} | {ex:.2f} | {t['processes'] / ex:.2f}x | "
                     f"{t['threads'] / ex:.2f}x | {t['processes'] / loc:.2f}x |")
    lines += ["", "A ratio above 1 means the Dask way was faster. The cluster runs on this "
              f"same {os.cpu_count()}-core machine: what a cluster of many machines gains "
              "is the cores, which this cannot show; it shows the cost of the Dask path "
              "itself (task "
              "scheduling, rows sent back over TCP to the one writer). Load average "
              f"(1 min) of the shared machine at the start and the end: {load[0]:.1f}, "
              f"{load[1]:.1f} on {os.cpu_count()} cores."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    sys.exit(main())
