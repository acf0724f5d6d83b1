"""Subprocess for tests/test_resume.py: train the tiny preset with per-epoch checkpoints.

    python tests/resume_worker.py CKPT_DIR --epochs 4 [--resume]
        [--kill-at-step S]     SIGKILL itself right after generator step S
        [--kill-in-save E]     SIGKILL itself while checkpoint E is half written
                               (temp file complete, not yet renamed into place)

Everything here is what the train flow does, minus Prefect and MLflow.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import storage.checkpoints as ckpt  # noqa: E402
from gan.data import ResidentData  # noqa: E402
from gan.trainer import TrainConfig, WGANTrainer  # noqa: E402

FINGERPRINT = "synthetic-v1"
N_CLASSES, H, W = 3, 32, 32


def data() -> ResidentData:
    g = torch.Generator().manual_seed(42)
    labels = torch.arange(80) % N_CLASSES
    x = 0.3 * torch.randn(80, 1, H, W, generator=g)
    for c in range(N_CLASSES):
        x[labels == c, :, c * 10:c * 10 + 8, :] += 2.0
    return ResidentData(x.clamp(-4, 4), labels)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt_dir", type=Path)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-at-step", type=int, default=None)
    ap.add_argument("--kill-in-save", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    cfg = TrainConfig(preset="tiny", epochs=args.epochs, batch_size=8, seed=11, device="cpu",
                      checkpoint_every=1, keep_last=3)
    trainer = WGANTrainer(cfg, N_CLASSES, H, W)
    if args.resume:
        found = ckpt.load_latest(args.ckpt_dir)
        if found is not None:
            state, path = found
            ckpt.check_fingerprint(state["meta"], FINGERPRINT, warm_start=False)
            trainer.load_state_dict(state)
            print(f"resumed from {path.name} at epoch {trainer.epoch}", flush=True)

    if args.kill_in_save is not None:
        target = ckpt.checkpoint_name(args.kill_in_save)
        real_replace = os.replace

        def dying_replace(src: str, dst: str | Path) -> None:
            if Path(dst).name == target:
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)

        ckpt.os.replace = dying_replace  # type: ignore[attr-defined]

    def on_step(m: dict) -> None:
        if m["step"] == args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    train = data()
    while trainer.epoch < cfg.epochs:
        trainer.train_epoch(train, on_step=on_step)
        if trainer.epoch % cfg.checkpoint_every == 0 or trainer.epoch == cfg.epochs:
            ckpt.save_checkpoint(args.ckpt_dir, trainer.state_dict(), trainer.epoch,
                                 keep_last=cfg.keep_last, meta={"fingerprint": FINGERPRINT})
    return 0


if __name__ == "__main__":
    sys.exit(main())
