"""Small hand-made mel stores shared by the store tests (no audio, no Prefect)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.store_writer import MelStoreWriter, NewFile

MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 16, "frames": 24}


def new_file(path: str, rows: int, seed: int, cls: str | None = None) -> NewFile:
    rng = np.random.default_rng(seed)
    mels = (rng.normal(-40, 15, (rows, 16, 24))).astype(np.float16)
    return NewFile(path=path, class_name=cls or path.split("/")[0], hash=f"h{seed}",
                   size=100 + seed, mtime_ns=seed, mels=mels,
                   offsets=np.arange(rows, dtype=np.int64) * 1472)


def build(store: Path, files: list[NewFile], batch: int = 2) -> dict[str, NewFile]:
    w = MelStoreWriter.create_or_open(store, MEL)
    try:
        for i in range(0, len(files), batch):
            w.append(files[i:i + batch])
            w.commit()
        w.finalize()
    finally:
        w.close()
    return {f.path: f for f in files}


def expected_rows(files: dict[str, NewFile]) -> np.ndarray:
    return np.concatenate([files[p].mels for p in sorted(files)])
