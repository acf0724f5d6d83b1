"""Small hand-made mel stores shared by the store tests (no audio, no Prefect)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.mel_store import MelStore
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


def with_dead_rows(store: Path) -> None:
    """A store whose first file was replaced and another removed: 7 dead rows of 55 (three
    classes, one of them left empty)."""
    build(store, [new_file("b/2.wav", 3, 2), new_file("a/1.wav", 2, 1),
                  new_file("b/1.wav", 1, 3), new_file("a/0.wav", 40, 4),
                  new_file("c/x.wav", 5, 5)])
    with MelStoreWriter.create_or_open(store) as w:
        w.append([new_file("a/1.wav", 4, 77)])
        w.remove(["c/x.wav"])
        w.finalize(compact=False)


def expected_rows(files: dict[str, NewFile]) -> np.ndarray:
    return np.concatenate([files[p].mels for p in sorted(files)])


def assert_same_live_content(a: MelStore, b: MelStore) -> None:
    """Two stores serve the same live rows: classes, fingerprint, sources, labels, offsets,
    mels and normalisation statistics."""
    assert a.classes == b.classes and a.fingerprint == b.fingerprint
    assert a.row_sources() == b.row_sources()
    np.testing.assert_array_equal(a.labels(), b.labels())
    np.testing.assert_array_equal(a.offsets(), b.offsets())
    np.testing.assert_array_equal(a.load()[0], b.load()[0])
    np.testing.assert_array_equal(a.stats()[0], b.stats()[0])
    np.testing.assert_array_equal(a.stats()[1], b.stats()[1])
