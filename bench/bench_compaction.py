"""Compaction vs rebuilding the store: what dropping dead rows costs.

    .venv/bin/python -m bench.bench_compaction [--datasets fsdd esc10] [--reps 3] [--out FILE]

For each data set: a store of every file (the precompute flow), then every third file
deleted from the folder and the flow run again with compaction off, which leaves their rows
dead (a third of the store). Then, alternating, on fresh copies of that store:
- compact: `MelStoreWriter.compact()`, what `audio-wgan compact` runs (copy the live rows
  into a new generation, commit, delete the old arrays);
- rebuild: the alternative without compaction, the precompute flow on the remaining files
  into a new store (decode and mel again).
Both end with the same live rows (checked). Writes bench/results/compaction.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_precompute import link_subset, list_files

RESULT = Path(__file__).resolve().parent / "results" / "compaction.md"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def compact_copy(src: Path, dst: Path) -> tuple[float, dict]:
    from storage.store_writer import MelStoreWriter

    shutil.copytree(src, dst)
    t0 = time.perf_counter()
    with MelStoreWriter.create_or_open(dst) as w:
        done = w.compact()
    return time.perf_counter() - t0, done


def rebuild(data: Path, dst: Path) -> float:
    from flows.precompute import precompute

    t0 = time.perf_counter()
    precompute(str(data), str(dst))
    return time.perf_counter() - t0


def same_rows(a: Path, b: Path) -> bool:
    from storage.mel_store import MelStore

    # class names per row, not labels: the incremental store keeps the numbering of classes
    # whose every file was deleted, a new store never had them
    with MelStore.open(a) as x, MelStore.open(b) as y:
        (mx, lx), (my, ly) = x.load(), y.load()
        return (x.row_sources() == y.row_sources() and np.array_equal(mx, my)
                and [x.classes[i] for i in lx] == [y.classes[i] for i in ly])


def run_dataset(name: str, files: list[tuple[Path, str]], reps: int, tmp: Path) -> dict:
    from flows.precompute import precompute
    from storage.mel_store import MelStore

    data = link_subset(files, tmp / f"{name}-data")
    base = tmp / f"{name}-base.zarr"
    precompute(str(data), str(base), compact=False)
    for f, cls in files[::3]:
        os.unlink(data / cls / f.name)
    precompute(str(data), str(base), compact=False)
    with MelStore.open(base) as st:
        info = st.info()
    runs: dict[str, list[float]] = {"compact": [], "rebuild": []}
    done: dict = {}
    for r in range(reps):
        for kind in (("compact", "rebuild") if r % 2 == 0 else ("rebuild", "compact")):
            dst = tmp / f"{name}-{kind}-{r}.zarr"
            if kind == "compact":
                seconds, done = compact_copy(base, dst)
            else:
                seconds = rebuild(data, dst)
            runs[kind].append(seconds)
    last = tmp / f"{name}-compact-{reps - 1}.zarr"
    assert same_rows(last, tmp / f"{name}-rebuild-{reps - 1}.zarr"), name
    return {"name": name, "rows": info["rows"], "dead": info["dead_rows"],
            "files": info["files"], "mb_before": disk_mb(base), "mb_after": disk_mb(last),
            "dropped": done["dropped_rows"], "runs": runs,
            "compact": statistics.median(runs["compact"]),
            "rebuild": statistics.median(runs["rebuild"])}


def report(results: list[dict], reps: int) -> str:
    lines = [
        "# Compaction vs rebuilding the store",
        "",
        f"Command: `.venv/bin/python -m bench.bench_compaction --reps {reps}`",
        "",
        "A store of every file, then every third file deleted and the flow re-run with "
        "compaction off: their rows are dead. `compact` copies the live rows into a new "
        "generation of the arrays and deletes the old one (what `audio-wgan compact` and "
        "the automatic compaction at the end of a precompute run); `rebuild` is the way "
        "without compaction, the precompute flow on the remaining files into a new store. "
        "Both serve identical rows (checked). Medians of alternating runs, wall seconds, on "
        f"{os.cpu_count()} CPUs.",
        "",
        "| data set | live rows | dead rows | disk MB before | after | compact s | rebuild s "
        "| rebuild / compact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['rows']} | {r['dead']} | {r['mb_before']:.1f} | "
                     f"{r['mb_after']:.1f} | {r['compact']:.2f} | {r['rebuild']:.2f} | "
                     f"**{r['rebuild'] / r['compact']:.1f}x** |")
    lines += ["", "All runs (s): " + "; ".join(
        f"{r['name']}: compact {[round(x, 2) for x in r['runs']['compact']]}, rebuild "
        f"{[round(x, 2) for x in r['runs']['rebuild']]}" for r in results)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["fsdd", "esc10"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as t:
        results = [run_dataset(n, list_files(SHARED / n), args.reps, Path(t))
                   for n in args.datasets]
    text = report(results, args.reps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
