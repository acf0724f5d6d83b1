"""A small CNN that tells the store's classes apart: the judge for offline quality metrics.

Inception-style metrics need a classifier, but downloading pretrained audio weights is not an
option (offline, and they would not match our mel configuration). So we train a small CNN on
the store's own normalised log-mels, held out by source file, and use its softmax (accuracy,
Inception Score) and its penultimate layer (Fréchet distance). It is deliberately small:
it must train in seconds on a CPU and it is cached per store fingerprint by the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SPLIT_VERSION = 1  # bump when the split rule changes (part of the cache key)


@dataclass(frozen=True)
class ClassifierConfig:
    """Training knobs; part of the cache key, so changing one retrains."""

    widths: tuple[int, ...] = (16, 32, 64, 64)
    embed_dim: int = 64
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_train_rows: int = 4000  # caps CPU time and memory on big stores
    # average-pool the input first (a 128x256 mel is more than it needs), but never below 16
    input_pool: int = 4
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
        d = dict(d)
        d["widths"] = tuple(d.get("widths", cls.widths))
        return cls(**d)

    def key(self) -> str:
        """Short stable hash of the config and split rule, for cache file names."""
        blob = repr(sorted(self.to_dict().items())) + f"split{SPLIT_VERSION}"
        return hashlib.blake2b(blob.encode(), digest_size=6).hexdigest()


class MelClassifier(nn.Module):
    """normalised log-mel (B, 1, n_mels, frames) -> logits (B, n_classes).

    Conv-BN-ReLU-MaxPool blocks, then global average pooling, so any mel size works;
    `embed` gives the penultimate features used for the Fréchet distance.
    """

    def __init__(self, n_classes: int, cfg: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ClassifierConfig()
        self.n_classes = n_classes
        blocks: list[nn.Module] = []
        cin = 1
        for cout in cfg.widths:
            blocks += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.project = nn.Sequential(nn.Linear(cin, cfg.embed_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(cfg.embed_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        pool = max(1, min(self.cfg.input_pool, x.shape[-2] // 16, x.shape[-1] // 16))
        if pool > 1:
            x = F.avg_pool2d(x, pool, ceil_mode=True)
        h = self.features(x).mean(dim=(2, 3))
        return self.project(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _unit_hash(text: str) -> float:
    """Deterministic uniform [0, 1) value for a string (not Python's salted hash())."""
    # surrogateescape: a file name with undecodable bytes (PEP 383) hashes as its bytes
    h = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


def split_by_source(sources: Sequence[str], labels: np.ndarray, holdout: float = 0.2
                    ) -> np.ndarray:
    """Assign every row to "fit" (0), "ref" (1) or "probe" (2), never splitting a file.

    Within each class, files are ordered by a hash of their path; the first
    max(2, round(holdout * n_files)) files (never all of them) are held out, alternately as
    the real reference set (ref) and the real ceiling probe (probe). Ordering by hash keeps
    the split deterministic and independent of row order, and doing it per class keeps every
    class present in each part whenever it has enough files.
    """
    labels = np.asarray(labels)
    if len(sources) != len(labels):
        raise ValueError("sources and labels differ in length")
    part = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        files = sorted({sources[i] for i in rows}, key=lambda s: (_unit_hash(s), s))
        n = len(files)
        k = min(n - 1, max(2, round(holdout * n)))
        assign = {f: (1 + i % 2 if i < k else 0) for i, f in enumerate(files)}
        for i in rows:
            part[i] = assign[sources[i]]
    return part


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Temporarily cap torch's intra-op threads (process-wide; restored on exit).

    The classifier's convolutions are small: one thread is nearly as fast as two on an idle
    machine, and several times faster when other jobs share the cores (threads of a
    parallel region then wait on each other's time slices: measured 8 s vs 43 s on ESC-10).
    """
    prev = torch.get_num_threads()
    if n is None or n >= prev:
        yield
        return
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def train_classifier(x: torch.Tensor, y: torch.Tensor, n_classes: int,
                     cfg: ClassifierConfig | None = None, device: str | torch.device = "cpu",
                     num_threads: int | None = 1) -> tuple[MelClassifier, dict[str, float]]:
    """Train on normalised mels x (N, n_mels, frames) with labels y; deterministic for cfg.seed.

    Returns the model in eval mode and a few training figures (final loss, train accuracy).
    """
    cfg = cfg or ClassifierConfig()
    if len(x) == 0:
        raise ValueError("no rows to train the classifier on")
    with intra_op_threads(num_threads if torch.device(device).type == "cpu" else None):
        return _train(x, y, n_classes, cfg, device)


def _train(x: torch.Tensor, y: torch.Tensor, n_classes: int, cfg: ClassifierConfig,
           device: str | torch.device) -> tuple[MelClassifier, dict[str, float]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = MelClassifier(n_classes, cfg).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, -(-len(x) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                steps_per_epoch=steps_per_epoch)
    x = x.float()
    y = y.long()
    model.train()
    loss_sum, n_seen = 0.0, 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        loss_sum, n_seen = 0.0, 0
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two examples
                continue
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            n_seen += len(idx)
    model.eval()
    probs, _ = predict(model, x, device=device)
    acc = float((probs.argmax(1) == y.numpy()).mean())
    return model, {"final_loss": loss_sum / max(n_seen, 1), "train_accuracy": acc}


@torch.no_grad()
def predict(model: MelClassifier, x: torch.Tensor, batch_size: int = 128,
            device: str | torch.device | None = None, num_threads: int | None = 1
            ) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, C) and penultimate embeddings (N, D) as float64 numpy."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    probs, embs = [], []
    cpu = torch.device(device).type == "cpu"
    try:
        with intra_op_threads(num_threads if cpu else None):
            for i in range(0, len(x), batch_size):
                e = model.embed(x[i:i + batch_size].float().to(device))
                probs.append(F.softmax(model.head(e), dim=1).double().cpu())
                embs.append(e.double().cpu())
    finally:
        model.train(was_training)
    if not probs:
        return np.zeros((0, model.n_classes)), np.zeros((0, model.cfg.embed_dim))
    return torch.cat(probs).numpy(), torch.cat(embs).numpy()
