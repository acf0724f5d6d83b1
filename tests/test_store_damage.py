"""A damaged mel store is detected, never served as zeros or a Blosc traceback: a missing or
garbage chunk is a one-line StoreError naming the array and rows, `store-info --verify`
checks every chunk against the manifest's checksums, `compact --drop-damaged` drops the
rows of damaged chunks and re-queues their files for the next precompute."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
from store_fixtures import MEL, build, new_file

from gan.spectral import MelConfig
from storage.mel_store import MelStore, StoreError, rows_per_chunk
from storage.store_manifest import MANIFEST_FILE, read_manifest
from storage.store_writer import MelStoreWriter

CHUNK = rows_per_chunk(MelConfig(**MEL))  # 16x24 float16 rows: 1366 a chunk


def three_chunk_store(store: Path) -> dict:
    """Files a (chunk 0), b (chunks 0-1), c (chunk 1), d (chunk 2), in that row order."""
    return build(store, [new_file("a/0.wav", CHUNK - 10, 1), new_file("b/1.wav", 20, 2),
                         new_file("c/2.wav", CHUNK - 10, 3), new_file("d/3.wav", 30, 4)],
                 batch=1)


def chunk_file(store: Path, array: str, i: int) -> Path:
    tail = "/0/0" if array in ("mels", "mel_sums") else ""
    return store / array / "c" / f"{i}{tail}"


def last_err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "nothing on stderr"
    return err[-1]


def test_every_chunk_has_a_checksum_and_an_intact_store_verifies(tmp_path: Path) -> None:
    store = tmp_path / "s"
    three_chunk_store(store)
    m = read_manifest(store)
    assert m.rows == 2 * CHUNK + 30
    assert len(m.checksums["mels"]) == 3 and None not in m.checksums["mels"]
    assert len(m.checksums["labels"]) == 1 and len(m.checksums["mel_sums"]) > 3
    with MelStore.open(store) as st:
        v = st.verify()
    assert v["ok"] and v["damaged"] == [] and v["without_checksum"] == 0
    assert v["chunks"] == sum(len(c) for c in m.checksums.values())


def test_a_missing_chunk_is_a_one_line_error_naming_array_and_rows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main

    store = tmp_path / "s"
    three_chunk_store(store)
    chunk_file(store, "mels", 1).unlink()  # rm <store>/mels/c/1/0/0
    with pytest.raises(StoreError) as e:
        MelStore.open(store)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"chunk 1 of mels (rows {CHUNK}-{2 * CHUNK - 1}) is missing" in msg
    assert "compact --drop-damaged" in msg
    # a reader that skipped the check still never gets zeros
    with MelStore.open(store, check=False) as st:
        with pytest.raises(StoreError, match="chunk 1 of mels .* is missing"):
            st.load()
        assert st.read_rows([0]).shape == (1, 16, 24)  # rows of intact chunks still read
        with pytest.raises(StoreError, match="is missing"):
            list(st.iter_batches(8, seed=0))
    assert main(["store-info", str(store)]) == 2
    assert "chunk 1 of mels" in last_err_line(capsys)
    assert main(["store-info", str(store), "--verify"]) == 2
    out = capsys.readouterr()
    line = out.err.strip().splitlines()[-1]
    assert line.startswith(f"audio-wgan store-info: error: store {store} is damaged: chunk 1 "
                           "of mels") and "holding rows of 2 kept file(s)" in line
    assert "chunk 1 of mels" in out.out and "b/1.wav, c/2.wav" in out.out
    # precompute (any writer) refuses to bury the damage under new rows
    with pytest.raises(StoreError, match="is missing"):
        MelStoreWriter.create_or_open(store)


def test_garbage_and_swapped_chunks(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    from audio_wgan.cli import main

    store = tmp_path / "s"
    three_chunk_store(store)
    chunk_file(store, "mels", 2).write_bytes(b"\x00garbage" * 100)
    with MelStore.open(store) as st:  # present: opens; reading it is a one-line error
        with pytest.raises(StoreError) as e:
            st.load()
        assert "chunk 2 of mels" in str(e.value) and "does not decode" in str(e.value)
        assert "\n" not in str(e.value)
        with pytest.raises(StoreError, match="chunk 2 of mels"):
            st.read_rows([len(st) - 1])
    # a chunk that decodes but holds other rows (here: chunk 0's file) fails its checksum
    shutil.copy(chunk_file(store, "mels", 0), chunk_file(store, "mels", 1))
    assert main(["store-info", str(store), "--verify", "--json"]) == 2
    out = capsys.readouterr()
    v = json.loads(out.out)["verify"]
    assert [(d["array"], d["chunk"], d["problem"].split(" (")[0]) for d in v["damaged"]] == [
        ("mels", 1, "does not match its checksum"), ("mels", 2, "does not decode")]
    assert v["files"] == ["b/1.wav", "c/2.wav", "d/3.wav"]
    assert "and 1 more chunk(s)" in out.err.strip().splitlines()[-1]
    assert main(["compact", str(store)]) == 2  # compaction says so too, and changes nothing
    assert "chunk 1 of mels (rows" in last_err_line(capsys)
    assert read_manifest(store).generation == 0


def test_compact_drop_damaged_keeps_the_intact_files_and_requeues_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main

    store = tmp_path / "s"
    files = three_chunk_store(store)
    chunk_file(store, "mels", 1).unlink()
    assert main(["compact", str(store)]) == 2  # without the flag: refused, one line
    assert "is missing" in last_err_line(capsys)
    assert main(["compact", str(store), "--drop-damaged"]) == 0
    out = capsys.readouterr().out
    assert "1 damaged chunk(s); 2 file(s) re-queued for the next precompute: b/1.wav, " \
           "c/2.wav" in out
    with MelStore.open(store) as st:
        assert [e.path for e in st.files()] == ["a/0.wav", "d/3.wav"]
        np.testing.assert_array_equal(st.load()[0], np.concatenate(
            [files["a/0.wav"].mels, files["d/3.wav"].mels]))
        assert st.info()["requeued"] == ["b/1.wav", "c/2.wav"]
        v = st.verify()
        assert v["ok"] and v["without_checksum"] == 0 and st.manifest.generation == 1
    # the next precompute computes them again (they are no longer kept), and the store
    # stops listing them as re-queued once their rows are back
    with MelStoreWriter.create_or_open(store) as w:
        assert set(w.manifest.known_files()) == {"a/0.wav", "d/3.wav"}
        w.append([files["b/1.wav"], files["c/2.wav"]])
        w.finalize(compact=False)
    with MelStore.open(store) as st:
        assert st.info()["requeued"] == [] and len(st.files()) == 4 and st.verify()["ok"]


def test_stores_without_checksums_still_verify_decoding(tmp_path: Path) -> None:
    store = tmp_path / "s"
    three_chunk_store(store)
    doc = orjson.loads((store / MANIFEST_FILE).read_bytes())
    del doc["checksums"]  # as written before checksums existed
    (store / MANIFEST_FILE).write_bytes(orjson.dumps(doc))
    with MelStore.open(store) as st:
        v = st.verify()
    assert v["ok"] and v["without_checksum"] == v["chunks"] > 0
    chunk_file(store, "mels", 0).write_bytes(b"junk")
    with MelStore.open(store) as st:
        v = st.verify()
    assert not v["ok"] and v["damaged"][0]["chunk"] == 0
    assert v["damaged"][0]["problem"].startswith("does not decode")
    # a writer on such a store checksums every chunk it starts; earlier ones stay unknown
    shutil.rmtree(store)
    three_chunk_store(store)
    (store / MANIFEST_FILE).write_bytes(orjson.dumps(doc))
    with MelStoreWriter.create_or_open(store) as w:
        w.append([new_file("e/4.wav", CHUNK, 5)])
        w.finalize(compact=False)
    crcs = read_manifest(store).checksums["mels"]
    assert crcs[:3] == [None, None, None] and crcs[3] is not None


def test_uncommitted_rows_in_the_last_chunk_leave_its_checksum_valid(tmp_path: Path) -> None:
    """A precompute killed after writing rows into the chunk that holds the last committed
    ones (before its commit) rewrote that chunk: its committed rows still verify."""
    store = tmp_path / "s"
    build(store, [new_file("a/0.wav", 10, 1)])
    w = MelStoreWriter.create_or_open(store)
    w.append([new_file("b/1.wav", 5, 2)])  # rows 10-14 into chunk 0, never committed
    w.close()
    with MelStore.open(store) as st:
        assert len(st) == 10 and st.verify()["ok"]


def test_training_refuses_a_store_with_a_lost_chunk(tmp_path: Path) -> None:
    from gan.errors import TrainingError
    from tasks.train_data import open_training_data

    store = tmp_path / "s"
    three_chunk_store(store)
    chunk_file(store, "mel_sums", 0).unlink()
    with pytest.raises(TrainingError, match="chunk 0 of mel_sums .* is missing"):
        open_training_data(str(store), batch_size=8, seed=0)


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_harness")
def test_train_refuses_a_garbage_chunk_and_compact_then_precompute_repair_it(
        tmp_path: Path, mlflow_uri: str, write_tone, capsys: pytest.CaptureFixture[str]) -> None:
    """Garbage in a chunk (present, so the open check passes): training ends in one line
    naming the chunk, exit 2, instead of a Blosc traceback or training on zeros; then
    `compact --drop-damaged` + precompute give the store an uninterrupted run makes."""
    from audio_wgan.cli import main
    from flows.precompute import precompute

    for i in range(6):
        write_tone(f"c{i % 2}/t{i}.wav", seconds=0.5, sr=8000, freq=300 + 90 * i,
                   root=tmp_path / "d")
    store = tmp_path / "s"
    mel = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "frames": 32}
    precompute(str(tmp_path / "d"), str(store), mel=mel)
    precompute(str(tmp_path / "d"), str(tmp_path / "clean"), mel=mel)
    chunk_file(store, "mels", 0).write_bytes(b"\x02\x01garbage" * 64)
    code = main(["train", "--store", str(store), "--preset", "tiny", "--epochs", "1",
                 "--checkpoint-dir", str(tmp_path / "ck"), "--no-register", "--quiet"])
    line = last_err_line(capsys)
    assert code == 2, line
    assert line.startswith("audio-wgan train: error:") and "chunk 0 of mels" in line
    assert "does not decode" in line
    # repaired: the damaged rows dropped, their files computed again by the next precompute
    assert main(["compact", str(store), "--drop-damaged"]) == 0
    assert "6 file(s) re-queued" in capsys.readouterr().out
    again = precompute(str(tmp_path / "d"), str(store), mel=mel)
    assert again["added_files"] == 6
    with MelStore.open(store) as st, MelStore.open(tmp_path / "clean") as ref:
        assert st.fingerprint == ref.fingerprint and st.verify()["ok"]
        np.testing.assert_array_equal(st.load()[0], ref.load()[0])
        assert st.info()["requeued"] == []


def test_chunk_checks_on_a_store_that_is_not_a_local_directory() -> None:
    """Presence is asked of the Zarr store itself (concurrently), so object stores work."""
    import zarr
    from zarr.core.sync import sync

    from storage.store_integrity import chunks_exist, read_checked

    mem = zarr.storage.MemoryStore()
    arr = zarr.create_array(mem, name="mels", shape=(30, 2), chunks=(10, 2), dtype="float32")
    arr[:] = np.arange(60, dtype=np.float32).reshape(30, 2)
    sync(mem.delete("mels/c/1/0"))
    assert chunks_exist(arr, [0, 1, 2]) == [True, False, True]
    np.testing.assert_array_equal(read_checked(arr, np.array([0, 25])), [[0, 1], [50, 51]])
    with pytest.raises(StoreError, match=r"chunk 1 of mels \(rows 10-19\) is missing"):
        read_checked(arr, np.array([0, 15]), dense=True)


def test_training_refuses_swapped_chunks_and_verifies_once_per_state(tmp_path: Path
                                                                      ) -> None:
    """Chunks that decode but hold other rows (swapped): `store-info --verify` flags them,
    and so does training now, before any step (it trained with exit 0 before); an intact
    store is verified once per committed state (a marker beside the store)."""
    from gan.errors import TrainingError
    from tasks.train_data import describe_training_data, forget_training_data

    store = tmp_path / "s"
    three_chunk_store(store)
    describe_training_data(str(store), batch_size=8, seed=0)
    forget_training_data()
    markers = list((tmp_path / "s.verified").iterdir())
    assert len(markers) == 1
    shutil.copy(chunk_file(store, "mels", 0), chunk_file(store, "mels", 1))
    describe_training_data(str(store), batch_size=8, seed=0)  # same state: not read again
    forget_training_data()
    markers[0].unlink()
    with pytest.raises(TrainingError, match="chunk 1 of mels .* does not match its checksum"):
        describe_training_data(str(store), batch_size=8, seed=0)
    forget_training_data()
