"""Where the trainer's minibatches come from, with no knowledge of how they are stored.

Both sources yield `(x, labels)` with x float32 (B, 1, n_mels, frames), already normalised,
and labels int64 (B,), on the training device. Each epoch's batches depend only on
(seed, epoch), never on what ran before, so a run resumed from an epoch-boundary
checkpoint sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import numpy as np
import torch

from gan.distributed import SINGLE, World, shard

Batch = tuple[torch.Tensor, torch.Tensor]
ArrayLike = np.ndarray | torch.Tensor


class TrainData(Protocol):
    """What `WGANTrainer.train_epoch` consumes."""

    def epoch_batches(self, epoch: int, batch_size: int, seed: int,
                      device: torch.device, world: World = SINGLE) -> Iterator[Batch]: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """One 63-bit seed per (run seed, epoch); a fixed mix so it is stable across processes."""
    return (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1)


def _as_x(x: ArrayLike) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"batches must be (B, 1, n_mels, frames) or (B, n_mels, frames), "
                         f"got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"mel batches must be floating point, got {t.dtype}")
    return t


def _as_labels(y: ArrayLike, n: int) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(y)) if isinstance(y, np.ndarray) else y
    t = t.reshape(-1).long()
    if t.shape[0] != n:
        raise ValueError(f"{n} examples but {t.shape[0]} labels")
    return t


class ResidentData:
    """The whole (normalised) set held in memory, moved once to the device when it fits.

    x: (N, 1, H, W) or (N, H, W) float (float16 is fine: batches are cast to float32);
    labels: (N,) integers. Each epoch is a fresh permutation drawn from a CPU
    `torch.Generator` seeded by (seed, epoch); the last partial batch is dropped, except
    that a set smaller than one batch gives a single batch of everything.
    """

    def __init__(self, x: ArrayLike, labels: ArrayLike,
                 max_device_fraction: float = 0.5) -> None:
        self.x = _as_x(x)
        self.labels = _as_labels(labels, self.x.shape[0])
        if self.x.shape[0] == 0:
            raise ValueError("no training examples")
        self.max_device_fraction = max_device_fraction
        self._placed: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self) // batch_size)

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The data on `device` if it fits within max_device_fraction of free memory."""
        if self._placed is not None and self._placed[0] == device:
            return self._placed[1], self._placed[2]
        x, y = self.x, self.labels
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if x.numel() * x.element_size() <= self.max_device_fraction * free:
                x, y = x.to(device), y.to(device)
            else:  # stays on the host; pinned so per-batch copies can be asynchronous
                x, y = x.pin_memory(), y.pin_memory()
        else:
            x, y = x.to(device), y.to(device)
        self._placed = (device, x, y)
        return x, y

    def epoch_batches(self, epoch: int, batch_size: int, seed: int,
                      device: torch.device, world: World = SINGLE) -> Iterator[Batch]:
        """The epoch's permutation (the same on every rank), this rank's shard of it."""
        x, y = self._on(device)
        g = torch.Generator(device="cpu").manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(len(self), generator=g).to(x.device)
        for idx in shard(order, batch_size, world):
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            yield (xb.to(device, non_blocking=True).float(),
                   yb.to(device, non_blocking=True))


class StreamingData:
    """Batches streamed per epoch from a callable, for sets too big to hold in memory.

    `batches_fn(epoch)` returns an iterable of already-normalised `(x, labels)` batches
    (numpy or torch); it owns batch size, shuffling and its seed (e.g. a store's
    `iter_batches(batch_size, seed, epoch)`), so `epoch_batches` ignores those arguments.
    `transform` runs on each x after it reaches the device (e.g. normalisation on the GPU).
    A background thread keeps up to `prefetch` batches ready, overlapping reading with
    training; order is preserved, so determinism is not affected.
    """

    def __init__(self, batches_fn: Callable[[int], Iterable[tuple[ArrayLike, ArrayLike]]],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 prefetch: int = 2, n_batches: int | None = None) -> None:
        self.batches_fn = batches_fn
        self.transform = transform
        self.prefetch = prefetch
        self.n_batches = n_batches  # per epoch; needed to give every rank as many steps

    def _convert(self, xb: ArrayLike, yb: ArrayLike, device: torch.device) -> Batch:
        x = _as_x(xb)
        y = _as_labels(yb, x.shape[0])
        if device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        x = x.to(device, non_blocking=True).float()
        y = y.to(device, non_blocking=True)
        if self.transform is not None:
            x = self.transform(x)
        return x, y

    def epoch_batches(self, epoch: int, batch_size: int, seed: int,
                      device: torch.device, world: World = SINGLE) -> Iterator[Batch]:
        """Rank r of R takes batches r, r + R, ... of the stream, as many on every rank."""
        source = iter(self.batches_fn(epoch))
        if world.distributed:
            if self.n_batches is None:
                raise ValueError("streaming data on several ranks needs n_batches")
            steps = max(1, self.n_batches // world.size)
            source = (b for i, b in zip(range(steps * world.size), source, strict=False)
                      if i % world.size == world.rank)
        if self.prefetch <= 0:
            for xb, yb in source:
                yield self._convert(xb, yb, device)
            return
        yield from _prefetched(source, self.prefetch,
                               lambda b: self._convert(b[0], b[1], device))


_DONE = object()


def _prefetched(source: Iterator, depth: int, convert: Callable) -> Iterator:
    """Run `convert(next(source))` in a worker thread, `depth` items ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in source:
                out = convert(item)
                while not stop.is_set():
                    try:
                        q.put(out, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(exc)

    t = threading.Thread(target=work, name="batch-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # drain so a blocked put can see `stop`
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)
