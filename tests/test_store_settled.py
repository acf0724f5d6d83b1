"""An unchanged precompute of a settled store answers from the manifest without a writer
(storage.store_settled): the same summary as the writer's, nothing written, and a writer
whenever there is anything at all to do, or any doubt."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storage.store_lock import StoreBusyError, StoreLock
from storage.store_manifest import read_manifest
from storage.store_settled import open_settled
from storage.store_writer import MelStoreWriter
from tasks import precompute as tp

MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "frames": 32}
TIMING = ("seconds", "compute_seconds", "clips_per_s")


@pytest.fixture
def data(tmp_path: Path, write_tone: Callable[..., Path]) -> Path:
    root = tmp_path / "data"
    for i in range(3):
        write_tone(f"alpha/a{i}.wav", seconds=0.5, sr=8000, freq=300 + 100 * i, root=root)
    write_tone("beta/b0.wav", seconds=0.3, sr=8000, freq=900, root=root)
    (root / "beta" / "notes.txt").write_text("not audio")  # an ignored file
    return root


def update(data: Path, store: Path, mel: dict[str, Any] | None = MEL,
           compact: bool | None = None) -> dict[str, Any]:
    scan = tp.scan_sources.fn(str(data), str(store))
    return tp.update_store.fn(str(store), mel, scan, str(data), 0.0, batch_size=2, workers=1,
                              device="cpu", pool="threads", dask_address=None,
                              compact=compact)


class WriterOpened(Exception):
    pass


def _refuse(*_a: object, **_k: object) -> None:
    raise WriterOpened


def stored(store: Path) -> dict[Path, int]:
    """mtime of every file but the lock's (which takes the pid of whoever holds it)."""
    return {p: p.stat().st_mtime_ns for p in store.rglob("*")
            if p.is_file() and p.name != ".precompute.lock"}


def without_timing(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in TIMING}


def test_an_unchanged_run_answers_as_the_writer_does_and_writes_nothing(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "s"
    update(data, store)
    m = read_manifest(store)
    assert m is not None and m.settled == m.commits > 0  # the run's finalize settled it
    # the writer's answer for an unchanged store (it opens, unsettles, finalizes, settles)
    by_writer = update(data, store)
    assert by_writer["changed"] is False and by_writer["unchanged_files"] == 4
    assert by_writer["ignored"] and by_writer["processed_files"] == 0
    before = (store / "manifest.json").read_bytes()
    mtimes = stored(store)
    monkeypatch.setattr(MelStoreWriter, "create_or_open", _refuse)
    settled = update(data, store)
    assert without_timing(settled) == without_timing(by_writer)
    assert (store / "manifest.json").read_bytes() == before
    assert mtimes == stored(store)
    StoreLock(store).acquire().release()  # the lock it took is released


def test_a_writer_unsettles_the_store_before_it_writes(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    update(data, store)
    w = MelStoreWriter.create_or_open(store, MEL)
    try:  # a writer killed from here on has left the store unsettled on disk
        m = read_manifest(store)
        assert m is not None and m.settled == 0
        with pytest.raises(StoreBusyError):  # (and while it lives, the store is its own)
            open_settled(store, MEL)
    finally:
        w.close()
    assert open_settled(store, MEL) is None  # no finalize since: a writer must look


@pytest.mark.parametrize("change", [
    "new file", "changed file", "removed file", "new ignored file", "new class folder",
    "other mel", "compact always with dead rows", "missing chunk", "old generation",
])
def test_anything_to_do_opens_the_writer(data: Path, tmp_path: Path, change: str,
                                         monkeypatch: pytest.MonkeyPatch,
                                         write_tone: Callable[..., Path]) -> None:
    store = tmp_path / "s"
    update(data, store)
    mel, compact = MEL, None
    if change == "new file":
        write_tone("alpha/a9.wav", seconds=0.4, sr=8000, freq=700, root=data)
    elif change == "changed file":
        f = data / "alpha" / "a0.wav"
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    elif change == "removed file":
        (data / "alpha" / "a1.wav").unlink()
    elif change == "new ignored file":
        (data / "alpha" / "readme.md").write_text("x")
    elif change == "new class folder":
        (data / "gamma").mkdir()
    elif change == "other mel":
        mel = {**MEL, "n_mels": 16}
    elif change == "compact always with dead rows":
        write_tone("alpha/a0.wav", seconds=0.6, sr=8000, freq=333, root=data)
        update(data, store, compact=False)  # the old rows of a0 stay, dead
        m = read_manifest(store)
        assert m is not None and m.rows > m.live_rows() and m.settled == m.commits
        compact = True
    elif change == "missing chunk":
        next(p for p in (store / "mels" / "c").rglob("*") if p.is_file()).unlink()
    elif change == "old generation":
        shutil.copytree(store / "mels", store / "gen7" / "mels")  # as a reader-held leftover
    monkeypatch.setattr(MelStoreWriter, "create_or_open", _refuse)
    with pytest.raises(WriterOpened):
        update(data, store, mel=mel, compact=compact)


def test_a_busy_store_is_refused_as_the_writer_refuses_it(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    update(data, store)
    lock = StoreLock(store).acquire()
    try:
        with pytest.raises(StoreBusyError, match="being written by another precompute"):
            update(data, store)
    finally:
        lock.release()


def test_a_store_made_by_older_code_is_settled_by_its_first_run(data: Path,
                                                                 tmp_path: Path) -> None:
    """Manifests without `settled` (made before it existed) read as unsettled."""
    store = tmp_path / "s"
    update(data, store)
    doc = json.loads((store / "manifest.json").read_text())
    doc.pop("settled")
    (store / "manifest.json").write_text(json.dumps(doc))
    assert open_settled(store, MEL) is None
    update(data, store)
    settled = open_settled(store, None)
    assert settled is not None
    settled[1].release()
