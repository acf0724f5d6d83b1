"""The mel store on S3 (moto's server on loopback) vs a local directory, in one run.

    .venv/bin/python -m bench.bench_s3_store [--datasets fsdd esc10] [--reps 2] [--out FILE]

For each data set, alternating local and S3 on the same files: the precompute flow into a
new store (decode, mel, append, commit per batch: Zarr chunk PUTs and a conditional
manifest PUT on S3), then one training epoch's data loading from it, both ways training
reads: resident (`MelStore.open` + `load`, what `train` does when the rows fit in memory)
and streamed (`MelStore.open` + one epoch of `iter_batches(64)`, shuffled chunk windows).
Both stores serve identical rows (checked). Loopback S3 has no network latency and moto
keeps objects in memory: these ratios are a lower bound on what a real endpoint costs.
Writes bench/results/s3_store.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_precompute import link_subset, list_files

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "s3_store.md"
SHARED = ROOT.parent / "shared" / "data"
BATCH = 64


def precompute_into(data: Path, store: str) -> float:
    from flows.precompute import precompute

    t0 = time.perf_counter()
    precompute(str(data), store)
    return time.perf_counter() - t0


def load_resident(store: str) -> tuple[float, np.ndarray]:
    from storage.mel_store import MelStore

    t0 = time.perf_counter()
    with MelStore.open(store) as st:
        mels, _ = st.load()
    return time.perf_counter() - t0, mels


def load_streamed(store: str) -> tuple[float, int]:
    from storage.mel_store import MelStore

    t0 = time.perf_counter()
    n = 0
    with MelStore.open(store) as st:
        for x, _ in st.iter_batches(BATCH, seed=0, epoch=0):
            n += len(x)
    return time.perf_counter() - t0, n


def run_dataset(name: str, files: list[tuple[Path, str]], reps: int, tmp: Path,
                bucket: str) -> dict:
    from storage.mel_store import MelStore

    data = link_subset(files, tmp / f"{name}-data")
    runs: dict[str, dict[str, list[float]]] = {
        k: {"precompute": [], "resident": [], "streamed": []} for k in ("local", "s3")}
    stores = {}
    for r in range(reps):
        for kind in (("local", "s3") if r % 2 == 0 else ("s3", "local")):
            store = (str(tmp / f"{name}-{r}.zarr") if kind == "local"
                     else f"s3://{bucket}/{name}-{r}.zarr")
            stores[kind] = store
            runs[kind]["precompute"].append(precompute_into(data, store))
            seconds, _ = load_resident(store)
            runs[kind]["resident"].append(seconds)
            seconds, _ = load_streamed(store)
            runs[kind]["streamed"].append(seconds)
    with MelStore.open(stores["local"]) as a, MelStore.open(stores["s3"]) as b:
        assert a.fingerprint == b.fingerprint and np.array_equal(a.load()[0], b.load()[0])
        info = a.info()
        s3_bytes = b.disk_bytes()
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in runs.items()}
    return {"name": name, "files": info["files"], "rows": info["rows"],
            "mb": info["bytes"] / 1e6, "s3_mb": s3_bytes / 1e6, "runs": runs, "med": med}


def report(results: list[dict], reps: int, datasets: list[str]) -> str:
    lines = [
        "# The mel store on S3 vs a local directory",
        "",
        f"Command: `nice -n 10 .venv/bin/python -m bench.bench_s3_store --datasets "
        f"{' '.join(datasets)} --reps {reps}`",
        "",
        "The same files precomputed into a local store and into `s3://` on moto's S3 server "
        "(a subprocess on 127.0.0.1, authentication on), alternating; then one training "
        "epoch's data loading from each: resident (`MelStore.open` + `load`, what `train` "
        "does when the rows fit its memory budget) and streamed (`MelStore.open` + one "
        f"epoch of `iter_batches({BATCH})`). Identical rows and fingerprints (checked). "
        "Medians, wall seconds, on "
        f"{os.cpu_count()} CPUs shared with other jobs. Loopback has no network latency and "
        "moto keeps objects in memory, so the S3 column is a lower bound on a real "
        "endpoint's cost (each chunk and manifest PUT is one round trip).",
        "",
        "| data set | files | rows | store MB | precompute local s | S3 s | S3 / local "
        "| resident load local s | S3 s | S3 / local | streamed epoch local s | S3 s "
        "| S3 / local |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["med"]
        cells = [f"{m['local'][k]:.2f} | {m['s3'][k]:.2f} | "
                 f"**{m['s3'][k] / m['local'][k]:.2f}x**"
                 for k in ("precompute", "resident", "streamed")]
        lines.append(f"| {r['name']} | {r['files']} | {r['rows']} | {r['mb']:.1f} | "
                     + " | ".join(cells) + " |")
    every = [f"{r['name']}: " + ", ".join(
        f"{kind} {metric} {[round(x, 2) for x in r['runs'][kind][metric]]}"
        for kind in ("local", "s3") for metric in ("precompute", "resident", "streamed"))
        for r in results]
    return "\n".join([*lines, "", "All runs (s): " + "; ".join(every)]) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["fsdd", "esc10"])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="files per data set (smoke runs)")
    ap.add_argument("--out", type=Path, default=RESULT)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    args = parse(argv)
    sys.path.insert(0, str(ROOT / "tests"))  # the moto server the tests start
    from s3_server import moto_s3

    with moto_s3() as s3, tempfile.TemporaryDirectory() as t:
        os.environ.update(s3.env())
        bucket = s3.make_bucket("bench-mel-store")
        # unmeasured: Prefect's temporary server and the S3 client start once per process
        warm = link_subset(list_files(SHARED / args.datasets[0], 2), Path(t) / "warm")
        for store in (str(Path(t) / "warm.zarr"), f"s3://{bucket}/warm.zarr"):
            precompute_into(warm, store)
            load_streamed(store)
        results = [run_dataset(n, list_files(SHARED / n, args.limit), args.reps, Path(t), bucket)
                   for n in args.datasets]
    text = report(results, args.reps, args.datasets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
