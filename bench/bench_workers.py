"""Why precompute decodes in threads: a thread pool vs a pool of worker processes.

    .venv/bin/python -m bench.bench_workers [--datasets fsdd esc10] [--reps 2] [--out FILE]

The compute-only loop of bench_precompute (decode + resample + mel of every file with the
flow's own FeatureExtractor, nothing written) on every core, two ways, alternating:
- threads: the flow's way (one torch thread each);
- processes: freshly spawned workers (a CUDA- and MKL-safe start; forking a process that
  has run MKL's FFT deadlocked here), each importing torch and building the extractor,
  then taking files in chunks of 16. Reported: the wall time to the first chunk started
  (start-up), from there to the last chunk done (compute alone), and the total.

Processes are not held back by the GIL, but each one pays torch's import. Then the
whole `precompute` flow with `pool="threads"` (what the default, `pool="auto"`, picks
below 5,000 files) and `pool="processes"` into fresh stores, on the same data sets plus
FSDD three times over (9000 links to its files under new names: a large set of short
clips). Writes bench/results/workers.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULT = Path(__file__).resolve().parent / "results" / "workers.md"
CHUNK = 16

_extractor = None  # per worker process


def _init() -> None:
    global _extractor
    import torch

    from clips.features import FeatureExtractor
    from gan.spectral import MelConfig

    torch.set_num_threads(1)
    _extractor = FeatureExtractor(MelConfig())


def _chunk(paths: list[str]) -> tuple[float, float, int]:
    """(wall start, wall end, rows) of one chunk, clocks comparable across processes."""
    t0 = time.time()
    rows = 0
    for p in paths:
        wave, _, _ = _extractor.waveform(p)
        rows += len(_extractor.features(wave)[0])
    return t0, time.time(), rows


def process_pool(paths: list[str], workers: int) -> dict[str, float]:
    t0 = time.time()
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                             initializer=_init) as pool:
        spans = list(pool.map(_chunk, chunks))
    end = time.time()
    first = min(s for s, _, _ in spans)
    return {"startup": first - t0, "compute": max(e for _, e, _ in spans) - first,
            "total": end - t0, "rows": sum(r for _, _, r in spans)}


def flow_seconds(data: Path, store: Path, workers: int, pool: str) -> float:
    from flows.precompute import precompute

    t0 = time.perf_counter()
    s = precompute(str(data), str(store), workers=workers, pool=pool)
    assert s["pool"] == pool and s["processed_files"] > 0
    return time.perf_counter() - t0


def linked_copies(files: list[tuple[Path, str]], dst: Path, copies: int) -> Path:
    for k in range(copies):
        for f, cls in files:
            (dst / cls).mkdir(parents=True, exist_ok=True)
            (dst / cls / f"{k}-{f.name}").symlink_to(f)
    return dst


def main(argv: list[str] | None = None) -> int:
    from bench.bench_precompute import SHARED, compute_only, list_files
    from clips.features import FeatureExtractor  # noqa: F401 - warm imports, as the flow has
    from clips.pools import default_workers
    from gan.spectral import MelConfig

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--datasets", nargs="+", default=["fsdd", "esc10"])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULT)
    ap.add_argument("--no-flows", action="store_true", help="only the compute-only loop")
    args = ap.parse_args(argv)
    workers = default_workers()
    lines = [
        "# Threads vs worker processes for precompute's compute",
        "",
        "Command: `" + " ".join([".venv/bin/python -m bench.bench_workers",
                                 *(sys.argv[1:] if argv is None else argv)]) + "`",
        "",
        f"{workers} workers either way; the compute-only loop of the precompute benchmark "
        "(decode + resample + mel, nothing written); medians of "
        f"{args.reps} alternating repetitions, seconds.",
        "",
        "| data set | files | threads | processes: start-up | processes: compute alone | "
        "processes: total | threads / processes, compute alone | threads / processes, "
        "total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows: list[tuple[str, float, dict[str, float]]] = []
    for name in args.datasets:
        paths = [str(f) for f, _ in list_files(SHARED / name)]
        threads: list[float] = []
        procs: list[dict[str, float]] = []
        for _ in range(args.reps):
            threads.append(compute_only([(Path(p), "") for p in paths], MelConfig(), workers))
            procs.append(process_pool(paths, workers))
            print(f"  {name}: threads {threads[-1]:.2f}s, processes {procs[-1]}", flush=True)
        t = statistics.median(threads)
        p = {k: statistics.median(d[k] for d in procs) for k in ("startup", "compute", "total")}
        lines.append(f"| {name} | {len(paths)} | {t:.2f} | {p['startup']:.2f} | "
                     f"{p['compute']:.2f} | {p['total']:.2f} | {t / p['compute']:.2f}x | "
                     f"{t / p['total']:.2f}x |")
        rows.append((name, t, p))
    first = [n for n, t, p in rows if t < p["total"]]
    lines += [
        "",
        "Reading: a worker process starts in " + ", ".join(
            f"{p['startup']:.1f} s ({n})" for n, _, p in rows) + " (torch and torchaudio "
        "imports), then computes " + ", ".join(
            f"{t / p['compute']:.2f}x as fast as the threads ({n})" for n, t, p in rows)
        + ". Short clips gain most: their per-file Python work is serialised by the GIL in "
        "threads, while long clips spend their time decoding and in torch kernels, which "
        "release it. Threads finish first in total on "
        + (", ".join(first) if first else "none of these data sets") + ". The compute-only "
        "bound of the precompute benchmark is the thread pool's time" + "".join(
            f"; processes already running would lower it to {p['compute']:.2f} s on {n}"
            for n, t, p in rows if p["compute"] < 0.9 * t) + ".",
    ]
    if not args.no_flows:
        lines += flow_table(args.datasets, args.reps, workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def flow_table(datasets: list[str], reps: int, workers: int) -> list[str]:
    import tempfile

    from bench.bench_precompute import SHARED, link_subset, list_files

    lines = [
        "",
        "The whole `precompute` flow into a fresh store (Prefect, hashing, Zarr writes "
        "included), threads vs processes, seconds (medians):",
        "",
        "| data set | files | threads | processes | threads / processes |",
        "|---|---|---|---|---|",
    ]
    sets = [(n, 1) for n in datasets] + [("fsdd", 3)] * ("fsdd" in datasets)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, copies in sets:
            files = list_files(SHARED / name)
            label = name if copies == 1 else f"{name} x{copies}"
            data = (link_subset(files, tmp / f"{name}-data") if copies == 1 else
                    linked_copies(files, tmp / f"{name}-x{copies}", copies))
            times: dict[str, list[float]] = {"threads": [], "processes": []}
            for r in range(reps):
                for pool in times:
                    times[pool].append(flow_seconds(data, tmp / f"{label}-{pool}-{r}.zarr",
                                                    workers, pool))
                print(f"  flow {label}: " + ", ".join(f"{k} {v[-1]:.2f}s"
                                                    for k, v in times.items()), flush=True)
            t, p = (statistics.median(times[k]) for k in ("threads", "processes"))
            lines.append(f"| {label} | {len(files) * copies} | {t:.2f} | {p:.2f} | "
                         f"{t / p:.2f}x |")
    return lines


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    sys.exit(main())
