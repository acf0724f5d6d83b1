"""Run every side-by-side benchmark, then assemble BENCHMARKS.md from bench/results/*.md.

    .venv/bin/python -m bench.run_all            # every benchmark (~15 min), then assemble
    .venv/bin/python -m bench.run_all --assemble # only rebuild BENCHMARKS.md from the results

bench.bench_quality (every model variant trained for 5 CPU minutes on ESC-10, ~80 min on
this machine) is not in the list: run it on its own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ORDER = ["quality", "quality_contenders", "quality_contenders_1200",
         "quality_contenders_ncritic", "quality_presets", "quality_padding", "precompute",
         "workers", "dask",
         "compaction", "s3_store", "train", "ddp", "train_flow", "render", "demo_run", "cli"]
BENCHES = ["bench.bench_precompute", "bench.bench_workers", "bench.bench_dask",
           "bench.bench_compaction", "bench.bench_s3_store",
           "bench.bench_train", "bench.bench_ddp",
           "bench.bench_train_flow", "bench.bench_render", "bench.bench_cli"]

HEADER = """# Benchmarks

Each benchmark runs our implementation side by side with a baseline in the same process
run, on the same data, and reports ratios; the command that produced each table is given
with it. Machine: the project's 2-core x86_64 CPU box (no GPU was available to these
sessions, so every number is a CPU number). Other jobs shared the machine while these ran,
so wall-clock figures are noisy; CPU-time figures are given beside them where that matters.
Regenerate everything with `.venv/bin/python -m bench.run_all` (or `make bench`).
"""


def assemble() -> Path:
    parts = [HEADER]
    names = sorted(p.stem for p in RESULTS.glob("*.md"))
    for name in [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]:
        text = (RESULTS / f"{name}.md").read_text().strip()
        parts.append(text.replace("\n# ", "\n## ").replace("# ", "## ", 1)
                     if text.startswith("# ") else text)
    out = ROOT / "BENCHMARKS.md"
    out.write_text("\n\n".join(parts) + "\n")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--assemble", action="store_true", help="only rebuild BENCHMARKS.md")
    args = ap.parse_args()
    if not args.assemble:
        for mod in BENCHES:
            print(f"== {mod}", flush=True)
            subprocess.run([sys.executable, "-m", mod], cwd=ROOT, check=True)
    print(assemble())
    return 0


if __name__ == "__main__":
    sys.exit(main())
