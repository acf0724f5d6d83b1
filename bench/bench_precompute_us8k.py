"""Precompute end to end at UrbanSound8K scale: `audio-wgan precompute` as a user runs it
against a seed-style loop, in the same run.

    .venv/bin/python -m bench.bench_precompute_us8k [--clips 9800] [--reps 1] [--work DIR]

UrbanSound8K is not on this machine, so a stand-in with its shape is cut from
../shared/data/esc10 (400 real 5 s clips at 44.1 kHz, 10 classes): `--clips` 4 s WAV files
in 10 class folders, each a 4 s cut at a random offset of an ESC-10 clip with a random gain
(-12..+3 dB), half of them at 44.1 kHz and half resampled to 48 kHz, one in four stereo,
16-bit PCM, as UrbanSound8K's files mostly are. Made once into `--work` (not timed).

Timed, in alternating repetitions:
(a) seed-style loop (bench.bench_precompute): one file at a time, soundfile, torchaudio's
    resample, MelSpectrogram + log, `torch.save` per file, on one torch thread (its fastest
    setting here); the loop only, as the seed runs it in a notebook that has torch loaded;
(b) `audio-wgan precompute DATA --store STORE` into a fresh store, as a fresh process:
    interpreter start, imports, the Prefect server it starts for itself (no server
    configured: audio_wgan/prefect_server.py), scan, hashing, decode, mel, Zarr writes,
    statistics, artifacts; and the same with AUDIO_WGAN_COMMAND_SERVER=0, on Prefect's
    temporary server (what (b) was before);
(c) the same after `audio-wgan server start` (the flow runs go to that server);
(d) an unchanged re-run of (c).
The default mel configuration (128 mels x 256 frames at 22.05 kHz, long clips split).
Writes bench/results/precompute_us8k.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from audio_wgan.prefect_server import COMMAND_SERVER_VAR
from bench.bench_precompute import _seed_loop, list_files
from gan.spectral import MelConfig

ROOT = Path(__file__).resolve().parents[1]
ESC10 = ROOT.parent / "shared" / "data" / "esc10"
RESULT = ROOT / "bench" / "results" / "precompute_us8k.md"
CLI = str(Path(sys.executable).with_name("audio-wgan"))
CLIP_S, RATES = 4.0, (44100, 48000)
TARGET = 2.5  # issue 13 item 9: precompute >= 2.5x the seed-style loop


def make_standin(out: Path, clips: int, seed: int = 0) -> Path:
    """`clips` 4 s WAV files cut from ESC-10 (see the module docstring); reused when there."""
    done = out / ".complete"
    if done.exists() and int(done.read_text()) == clips:
        return out
    shutil.rmtree(out, ignore_errors=True)
    sources = list_files(ESC10)
    rng = np.random.default_rng(seed)
    waves: dict[tuple[int, int], np.ndarray] = {}
    for i in range(clips):
        k = i % len(sources)
        path, cls = sources[k]
        rate = RATES[(i // len(sources)) % 2]
        if (k, rate) not in waves:
            x, sr = sf.read(path, dtype="float32", always_2d=True)
            mono = torch.from_numpy(x.mean(axis=1))
            if sr != rate:
                mono = torchaudio.functional.resample(mono, sr, rate)
            waves[(k, rate)] = mono.numpy()
            if len(waves) > 2 * len(sources):
                waves.pop(next(iter(waves)))
        w = waves[(k, rate)]
        n = int(CLIP_S * rate)
        start = int(rng.integers(0, max(1, len(w) - n)))
        cut = w[start:start + n] * 10 ** (rng.uniform(-12, 3) / 20)
        cut = np.clip(cut, -1.0, 1.0)
        if i % 4 == 3:
            cut = np.stack([cut, np.roll(cut, 7) * 0.9], axis=1)
        (out / cls).mkdir(parents=True, exist_ok=True)
        sf.write(out / cls / f"{i:05d}-{path.stem}.wav", cut, rate, subtype="PCM_16")
    done.write_text(str(clips))
    return out


def cli_env(cwd: Path) -> dict[str, str]:
    """The bench's own Prefect home: its background server is nobody else's."""
    return {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(cwd / "prefect-home")}


def become_subreaper() -> None:
    """Orphans of the processes this one starts come to it (Linux's PR_SET_CHILD_SUBREAPER)
    instead of init, so that their CPU time is counted when they are reaped: the worker
    processes' forkserver outlives the command by a moment, and its CPU (with its workers')
    would otherwise be lost with it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def children() -> set[int]:
    """This process's living (or unreaped) children, from /proc."""
    me, out = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == me:
                out.add(int(entry))
    return out


def run_cli(argv: list[str], cwd: Path, **extra_env: str) -> tuple[float, float]:
    """(wall s, CPU s of the process tree) of one fresh `audio-wgan` process: the command
    and every process it started, waited for once the command has answered (a server
    started before it, such as `audio-wgan server start`'s, is not counted)."""
    before, earlier = os.times(), children()
    t0 = time.perf_counter()
    subprocess.run([CLI, *argv], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**cli_env(cwd), **extra_env})
    wall = time.perf_counter() - t0
    for pid in children() - earlier:  # its orphans: the forkserver, the resource tracker
        os.waitpid(pid, 0)
    after = os.times()
    return wall, (after.children_user - before.children_user
                  + after.children_system - before.children_system)


def seed_loop(files: list[tuple[Path, str]], cfg: MelConfig, out: Path) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    c0 = time.process_time()
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        wall = _seed_loop(files, cfg, out)
    finally:
        torch.set_num_threads(old)
    return wall, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=9800)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-us8k"))
    args = ap.parse_args(argv)
    become_subreaper()
    started = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = make_standin(work / "data", args.clips)
    files = list_files(data)
    print(f"stand-in: {len(files)} clips in {data}", flush=True)
    cfg = MelConfig()
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in
                                                  ("seed", "own", "temp", "server",
                                                   "unchanged")}
    cwd = work / "cwd"
    cwd.mkdir(exist_ok=True)
    port = 4300 + os.getpid() % 500
    for rep in range(args.reps):
        runs["seed"].append(seed_loop(files, cfg, work / "seed-out"))
        print(f"rep {rep}: seed {runs['seed'][-1]}", flush=True)
        shutil.rmtree(work / "temp.zarr", ignore_errors=True)
        runs["own"].append(run_cli(["precompute", str(data), "--store",
                                    str(work / "temp.zarr")], cwd))
        print(f"rep {rep}: its own server {runs['own'][-1]}", flush=True)
        shutil.rmtree(work / "temp.zarr", ignore_errors=True)
        runs["temp"].append(run_cli(["precompute", str(data), "--store",
                                     str(work / "temp.zarr")], cwd,
                                    **{COMMAND_SERVER_VAR: "0"}))
        print(f"rep {rep}: temporary server {runs['temp'][-1]}", flush=True)
        subprocess.run([CLI, "server", "start", "--port", str(port)], cwd=cwd, check=True,
                       stdout=subprocess.DEVNULL, env=cli_env(cwd))
        try:
            shutil.rmtree(work / "served.zarr", ignore_errors=True)
            runs["server"].append(run_cli(["precompute", str(data), "--store",
                                           str(work / "served.zarr")], cwd))
            runs["unchanged"].append(run_cli(["precompute", str(data), "--store",
                                              str(work / "served.zarr")], cwd))
            print(f"rep {rep}: server {runs['server'][-1]}, unchanged {runs['unchanged'][-1]}",
                  flush=True)
        finally:
            subprocess.run([CLI, "server", "stop"], cwd=cwd, stdout=subprocess.DEVNULL,
                           env=cli_env(cwd))
    shutil.rmtree(work / "seed-out", ignore_errors=True)
    text = report(runs, len(files), args, time.perf_counter() - started)
    RESULT.write_text(text)
    print(text)
    return 0


def report(runs: dict[str, list[tuple[float, float]]], n: int, args: argparse.Namespace,
           whole_s: float) -> str:
    med = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    seed = med["seed"]

    def verdict(k: str) -> str:
        return "met" if seed / med[k] >= TARGET else "not met"

    rows = [
        ("seed-style loop, 1 torch thread (the loop only)", "seed", ""),
        ("`audio-wgan precompute` (no server configured: one of its own)", "own",
         verdict("own")),
        (f"the same with {COMMAND_SERVER_VAR}=0 (Prefect's temporary server)", "temp",
         verdict("temp")),
        ("`audio-wgan precompute` after `audio-wgan server start`", "server",
         verdict("server")),
        ("unchanged re-run of the above", "unchanged", ""),
    ]
    lines = [
        "# Precompute end to end at UrbanSound8K scale",
        "",
        f"Command: `.venv/bin/python -m bench.bench_precompute_us8k --clips {args.clips} "
        f"--reps {args.reps}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}; load average "
        f"{os.getloadavg()[0]:.1f} at the end; whole run {whole_s / 60:.0f} min (stand-in "
        f"included when it was made). Data: {n} stand-in clips of 4 s (ESC-10 cut at random "
        "offsets with random gains; half 44.1 kHz, half 48 kHz, a quarter stereo, 16-bit WAV); "
        "default mel config (128 x 256 at 22.05 kHz). Median of "
        f"{args.reps} alternating repetition(s); CPU s: the process (seed loop) or the "
        "command's process tree (its worker processes and their forkserver included).",
        "",
        "| what | wall s | clips / s | CPU s | seed / this | target >= 2.5x |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, k, target in rows:
        lines.append(f"| {label} | {med[k]:.1f} | {n / med[k]:.0f} | {cpu[k]:.1f} | "
                     f"{seed / med[k]:.2f}x | {target} |")
    lines += ["", "All runs (wall s, CPU s): " + "; ".join(
        f"{k} " + ", ".join(f"({w:.1f}, {c:.1f})" for w, c in v) for k, v in runs.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
