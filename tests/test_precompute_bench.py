"""Smoke test of the precompute benchmark on a handful of clips (the real run is manual)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not installed
from bench.bench_precompute import bench_dataset, list_files, report  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


def test_bench_runs_on_a_few_clips(shared_data: Path, tmp_path: Path) -> None:
    files = list_files(shared_data / "fsdd", limit=6)
    assert len({cls for _, cls in files}) == 6  # round-robin over the classes
    res = bench_dataset("fsdd", files, reps=1, workers=2, tmp=tmp_path)
    assert res["rows"] == 6 and res["rejected"] == 0
    text = report([res], None, 2, "cmd", 0.0)
    assert "| fsdd | 6 | 6 |" in text and "flow / bound" in text and "ceiling" in text
    assert res["best"]["write"] > 0  # (w): compute + the store writer, the ceiling


def test_worker_process_pool_computes_every_file(shared_data: Path) -> None:
    from bench.bench_workers import process_pool

    paths = [str(f) for f, _ in list_files(shared_data / "fsdd", limit=40)]
    res = process_pool(paths, 2)  # spawned workers: chunks of 16 files
    assert res["rows"] == 40
    assert 0 < res["startup"] < res["total"] and 0 < res["compute"] < res["total"]


def test_compaction_bench_on_a_few_clips(shared_data: Path, tmp_path: Path) -> None:
    from bench.bench_compaction import report, run_dataset

    res = run_dataset("fsdd", list_files(shared_data / "fsdd", limit=9), 1, tmp_path)
    assert (res["rows"], res["dead"], res["dropped"]) == (6, 3, 3)  # every third file deleted
    assert res["mb_after"] < res["mb_before"]
    assert "| fsdd | 6 | 3 |" in report([res], 1)
