"""A block of training epochs on several ranks: the Prefect task that launches `torchrun`,
and the entry point each rank runs (`python -m tasks.train_parallel SPEC.json`).

The task exchanges files, not objects: it hands the ranks a JSON spec (store, training
config, the checkpoint to start from with its SHA-256, the epoch to stop at, the time left)
and gets back the checkpoint rank 0 wrote (path + SHA-256) plus the block's per-epoch
statistics. Every rank opens the
store, builds the same `WGANTrainer` with its `World`, loads the same start checkpoint and
runs `fit`; DDP averages the gradients, so the ranks' weights stay identical. Only rank 0
writes the checkpoint, the result file and progress lines. A rank that dies ends the whole
run (torchrun stops the others); the task reports it in one line and the last checkpoint
stays what it was.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from gan.child_processes import die_with, die_with_parent
from gan.devices import resolve_device
from gan.distributed import World
from gan.errors import TrainingError
from gan.trainer import EpochStats, NonFiniteLossError, TimeBudget, TrainConfig, WGANTrainer
from storage.checkpoints import (
    CheckpointError,
    checkpoint_digest,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from storage.fault_points import fault_point
from tasks.train_data import check_same_store, open_training_data

MONITOR_INTERVAL_S = 1  # how often torchrun looks for a dead rank
_ROOT_CAUSE = re.compile(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)
_SIGNALS = {9: "SIGKILL", 15: "SIGTERM", 6: "SIGABRT", 11: "SIGSEGV", 7: "SIGBUS"}


def torchrun_command(nproc: int, spec_path: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", f"--monitor-interval={MONITOR_INTERVAL_S}",
            "--max-restarts=0", "-m", "tasks.train_parallel", spec_path]


def failure_reason(log: str) -> str:
    """torchrun's root-cause report -> 'rank 1 was killed (SIGKILL)' (or a short fallback)."""
    m = _ROOT_CAUSE.search(log.split("Root Cause", 1)[-1])
    if not m:
        last = [ln.strip() for ln in log.splitlines() if ln.strip()]
        return last[-1][:200] if last else "torchrun failed"
    rank, code = int(m.group(1)), int(m.group(2))
    if code < 0:
        return f"rank {rank} was killed ({_SIGNALS.get(-code, f'signal {-code}')})"
    return f"rank {rank} exited with code {code}"


@task(name="train-epochs-parallel", cache_policy=NO_CACHE)
def train_block_parallel(nproc: int, spec: dict[str, Any], start: dict[str, str] | None
                         ) -> dict[str, Any]:
    """Run one block on `nproc` ranks from the checkpoint `start` ({"path", "sha256"};
    None: fresh weights); the same result dict as `tasks.train.train_epochs`. Raises
    TrainingError (one line)."""
    ck_dir = Path(spec["checkpoint_dir"])
    ck_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ranks-", dir=ck_dir) as tmp:
        result_path = Path(tmp) / "result.json"
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps({**spec, "start": start,
                                         "result": str(result_path)}))
        log_path = Path(tmp) / "torchrun.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, int(spec.get("cpu_threads", 1))))}
        with open(log_path, "w") as log:
            # torchrun gets SIGTERM (and stops its ranks) when this process dies
            proc = subprocess.run(torchrun_command(nproc, str(spec_path)), stdout=None,
                                  stderr=log, env=env, cwd=os.getcwd(), check=False,
                                  preexec_fn=die_with(os.getpid()))
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
        if proc.returncode != 0 or result is None or "error" in result:
            kept = list_checkpoints(ck_dir)
            why = (result or {}).get("error") or failure_reason(log_path.read_text())
            raise TrainingError(f"training stopped: {why}; latest checkpoint stays "
                                f"{kept[-1].name if kept else 'none'}; nothing registered")
    return {**result, "sha256": checkpoint_digest(result["checkpoint"])}


# --- what each rank runs ---------------------------------------------------------------

def run_rank(spec: dict[str, Any]) -> None:
    """One rank's block: join, train to `until`, rank 0 checkpoints and reports, leave."""
    die_with_parent()  # torchrun's agent killed outright: no rank goes on without it
    world = World.from_env()
    cfg = TrainConfig.from_dict(spec["config"])
    threads = int(spec.get("cpu_threads", 1))
    if threads > 0:
        torch.set_num_threads(threads)
    main = world.is_main
    world.join(resolve_device(world.device(cfg.device)))  # DDP needs the group first
    try:
        try:  # every rank reads the same store and file, so all refuse alike
            data = open_training_data(spec["store"], cfg.batch_size, cfg.seed,
                                      int(spec.get("memory_budget_mb", 2048)))
            check_same_store(data, spec)
            trainer = WGANTrainer(cfg, len(data.classes), data.mel.n_mels, data.mel.frames,
                                  world)
            if spec.get("start"):
                start = spec["start"]
                trainer.load_state_dict(load_checkpoint(start["path"],
                                                        sha256=start["sha256"]))
        except (TrainingError, CheckpointError) as exc:
            if main:
                Path(spec["result"]).write_text(json.dumps({"error": str(exc)}))
            return
        budget = TimeBudget(spec["budget_s"]) if spec.get("budget_s") else None
        history: list[dict[str, Any]] = []

        def on_epoch(stats: EpochStats) -> None:
            fault_point(f"rank{world.rank}-epoch{stats.epoch}")
            if main:  # reported by the task that launched the ranks (tasks.train.train_blocks)
                history.append(stats.to_dict())

        def should_stop() -> bool:
            return world.any(budget is not None and budget.exhausted())

        try:
            trainer.fit(data.data, int(spec["until"]), on_epoch=on_epoch,
                        should_stop=should_stop if budget is not None else None)
        except NonFiniteLossError as exc:  # the same on every rank: gradients are averaged
            if main:
                Path(spec["result"]).write_text(json.dumps({"error": str(exc)}))
            return
        stopped = budget is not None and world.any(budget.exhausted())
        state = trainer.state_dict()  # a collective: every rank's RNG state is gathered
        if main:
            path = save_checkpoint(spec["checkpoint_dir"], state, trainer.epoch,
                                   keep_last=cfg.keep_last, meta=spec["meta"])
            Path(spec["result"]).write_text(json.dumps({
                "checkpoint": str(path), "epoch": trainer.epoch, "step": trainer.step,
                "history": history, "last": history[-1] if history else {},
                "stopped": stopped, "world_size": world.size}))
    finally:
        world.leave()


if __name__ == "__main__":
    run_rank(json.loads(Path(sys.argv[1]).read_text()))
