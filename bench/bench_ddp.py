"""Data-parallel training throughput: 2 gloo ranks vs 1 process on this CPU, same run.

    .venv/bin/python -m bench.bench_ddp [--epochs 3] [--reps 3] [--batch 32]

The same `WGANTrainer.fit` on the same resident data (`small` preset, 64x64 log-mels of
noise, 5 classes), one torch thread per process: (a) one process, batch B; (b) two ranks
started with torch.multiprocessing over a file-store process group (what torchrun sets up),
batch B on each rank, i.e. an effective batch of 2B. Throughput is real examples through
the critic per second of wall clock, counted over all ranks, after one warm-up epoch;
(a) and (b) alternate, medians of `--reps`. Writes bench/results/ddp.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RESULT = Path(__file__).resolve().parent / "results" / "ddp.md"
N_ROWS, H, W, N_CLASSES, PRESET = 2048, 64, 64, 5, "small"


def _run(rank: int, world_size: int, pg: str, out: str, batch: int, epochs: int) -> None:
    from gan.data import ResidentData
    from gan.distributed import World
    from gan.trainer import TrainConfig, WGANTrainer

    torch.set_num_threads(1)
    world = World(rank, world_size, rank)
    if world.distributed:
        dist.init_process_group("gloo", init_method=f"file://{pg}", rank=rank,
                                world_size=world_size)
    g = torch.Generator().manual_seed(0)
    data = ResidentData(torch.randn(N_ROWS, 1, H, W, generator=g).clamp(-4, 4),
                        torch.arange(N_ROWS) % N_CLASSES)
    tr = WGANTrainer(TrainConfig(preset=PRESET, batch_size=batch, device="cpu"), N_CLASSES,
                     H, W, world)
    tr.fit(data, 1)  # warm-up
    t0 = time.perf_counter()
    stats = tr.fit(data, 1 + epochs)
    seconds = time.perf_counter() - t0
    seen = sum(s.samples_per_s * s.seconds for s in stats)  # all ranks' examples
    if world.is_main:
        Path(out).write_text(f"{seen / seconds}")
    world.leave()


def measure(world_size: int, batch: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        pg, out = str(Path(tmp) / "pg"), str(Path(tmp) / "rate")
        if world_size == 1:
            _run(0, 1, pg, out, batch, epochs)
        else:
            mp.spawn(_run, args=(world_size, pg, out, batch, epochs), nprocs=world_size)
        return float(Path(out).read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    one, two = [], []
    for _ in range(args.reps):
        one.append(measure(1, args.batch, args.epochs))
        two.append(measure(2, args.batch, args.epochs))
        print(f"1 process {one[-1]:.0f}/s, 2 ranks {two[-1]:.0f}/s", flush=True)
    a, b = statistics.median(one), statistics.median(two)
    text = "\n".join([
        "# Data-parallel training (DDP, gloo) on the CPU",
        "",
        f"Command: `.venv/bin/python -m bench.bench_ddp --epochs {args.epochs} --reps "
        f"{args.reps} --batch {args.batch}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, one torch thread per "
        f"process; torch {torch.__version__}; load average {os.getloadavg()[0]:.1f} at the end.",
        f"`{PRESET}` preset, {H}x{W}, {N_ROWS} resident rows, batch {args.batch} per rank, "
        f"{args.epochs} timed epochs after a warm-up one; real examples through the critic "
        f"per wall second, all ranks together.",
        "",
        "| run | examples/s (median) | all repetitions |",
        "|---|---|---|",
        f"| (a) 1 process | {a:.0f} | {', '.join(f'{x:.0f}' for x in one)} |",
        f"| (b) 2 ranks (DDP, gloo) | {b:.0f} | {', '.join(f'{x:.0f}' for x in two)} |",
        "",
        f"**Ratio b/a: {b / a:.2f}x** (target >= 1.7x). Each rank does the work of one "
        f"process with the same batch, plus one gradient all-reduce per network step.",
    ]) + "\n"
    RESULT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
