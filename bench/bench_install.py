"""A fresh install, three ways, in one run: what `make venv` did before the lock, pip on the
lock, and what it does now (uv on the lock).

    python3 -m bench.bench_install [--out FILE]

Each way gets a new venv in a temp dir and empty pip and uv caches (set through
PIP_CACHE_DIR / UV_CACHE_DIR, so a user's caches are left alone), so every file is
downloaded or read again, as on a fresh machine:

- `pip, ranges`: `pip install --upgrade pip`, then `pip install -e '.[dev,scale]'` from
  `pyproject.toml`'s ranges (resolution included): the set-up before requirements.lock;
- `pip, lock`: `pip install --no-deps -r requirements.lock`, then the project `--no-deps`;
- `uv, lock`: `scripts/venv.sh` (pip installs the locked uv, `uv pip sync`, the project,
  the check that every version is as locked): what `make venv` runs now.

Wall seconds and the venv's size are reported. Needs network access to the package index;
mostly I/O, so the machine's other load matters less than for CPU benchmarks, but run it
on an idle machine. Writes bench/results/install.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _size_gb(path: Path) -> float:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 1e9


def _timed(name: str, venv: Path, steps: list[list[str]], env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    for cmd in steps:
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    return {"way": name, "seconds": seconds, "venv_gb": _size_gb(venv)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "install.md"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        for name in ("pip, ranges", "pip, lock", "uv, lock"):
            base = Path(tmp) / name.replace(", ", "-")
            venv = base / "venv"
            env = {**os.environ, "PIP_CACHE_DIR": str(base / "pip-cache"),
                   "UV_CACHE_DIR": str(base / "uv-cache")}
            py = str(venv / "bin" / "python")
            make = [[sys.executable if sys.prefix == sys.base_prefix else "python3",
                     "-m", "venv", str(venv)]]
            if name == "pip, ranges":
                steps = make + [[py, "-m", "pip", "install", "-q", "--upgrade", "pip"],
                                [py, "-m", "pip", "install", "-q", "-e", ".[dev,scale]"]]
            elif name == "pip, lock":
                steps = make + [[py, "-m", "pip", "install", "-q", "--no-deps", "-r",
                                 "requirements.lock"],
                                [py, "-m", "pip", "install", "-q", "--no-deps", "-e", "."]]
            else:
                steps = [["bash", "scripts/venv.sh", str(venv), "requirements.lock"]]
            print(f"{name} ...", flush=True)
            rows.append(_timed(name, venv, steps, env))
            print(f"  {rows[-1]['seconds']:.1f} s, {rows[-1]['venv_gb']:.2f} GB", flush=True)
            shutil.rmtree(base, ignore_errors=True)
    first = rows[0]["seconds"]
    lines = ["# A fresh install (bench/bench_install.py)", "",
             "`python3 -m bench.bench_install`: a new venv and empty caches each, one run.", "",
             "| way | wall s | venv GB | pip, ranges / this |", "|---|---:|---:|---:|"]
    lines += [f"| {r['way']} | {r['seconds']:.1f} | {r['venv_gb']:.2f} | "
              f"{first / r['seconds']:.2f}x |" for r in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
