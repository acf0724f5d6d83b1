"""The Zarr mel store on its own: layout, commit visibility, readers, stats, locking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from store_fixtures import MEL, build, expected_rows, new_file

from gan.spectral import MelConfig
from storage.mel_store import MelStore, StoreError, rows_per_chunk
from storage.store_lock import StoreBusyError, StoreLock
from storage.store_writer import MelStoreWriter, NewFile, resolve_mel_config


@pytest.fixture
def files() -> list[NewFile]:
    return [new_file("b/2.wav", 3, 2), new_file("a/1.wav", 2, 1), new_file("b/1.wav", 1, 3),
            new_file("a/0.wav", 40, 4), new_file("c/x.wav", 5, 5)]


def test_round_trip_layout_and_readers(tmp_path: Path, files: list[NewFile]) -> None:
    built = build(tmp_path / "s", files)
    st = MelStore.open(tmp_path / "s")
    assert len(st) == 51 and st.classes == ["b", "a", "c"]  # classes in order of first sight
    assert st.mel_config == MelConfig(**MEL)
    mels, labels = st.load()
    assert mels.dtype == np.float16 and mels.shape == (51, 16, 24)
    np.testing.assert_array_equal(mels, expected_rows(built))  # canonical order: path, offset
    srcs = st.row_sources()
    assert srcs[:40] == ["a/0.wav"] * 40 and srcs[-1] == "c/x.wav"
    assert labels.dtype == np.int64 and labels[0] == 1 and labels[-1] == 2
    assert st.offsets()[:3].tolist() == [0, 1472, 2944]
    assert st.class_counts() == {"b": 4, "a": 42, "c": 5}
    idx = np.array([50, 0, 3, 3])
    np.testing.assert_array_equal(st.read_rows(idx), mels[idx])
    assert st.nbytes_live() == 51 * 16 * 24 * 2
    # layout: float16 mels chunked along N in >= 1 MiB blocks, Blosc/Zstd, consolidated
    g = zarr.open_group(tmp_path / "s", mode="r", use_consolidated=False)
    arr = g["mels"]
    assert arr.dtype == np.float16 and arr.chunks[0] == rows_per_chunk(st.mel_config)
    assert arr.chunks[0] * 16 * 24 * 2 >= 1 << 20
    assert "zstd" in str(arr.compressors[0].cname)
    assert g["labels"].shape == g["source"].shape == g["offset"].shape == (51,)
    root = json.loads((tmp_path / "s" / "zarr.json").read_text())
    assert "consolidated_metadata" in root
    assert root["attributes"]["classes"] == ["b", "a", "c"]
    assert root["attributes"]["fingerprint"] == st.fingerprint
    assert len(root["attributes"]["norm_mean"]) == 16


def test_stats_float64_over_stored_values(tmp_path: Path, files: list[NewFile]) -> None:
    built = build(tmp_path / "s", files)
    st = MelStore.open(tmp_path / "s")
    mean, std = st.stats()
    x = expected_rows(built).astype(np.float64)
    assert mean.dtype == np.float32 and mean.shape == (16,)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(axis=(0, 2)), rtol=1e-5)
    full_mean, full_std, n = st.compute_stats_full()  # a pass over every mel agrees
    # per-row sums are float32 over one row's frames, totals float64: ~1e-7 relative
    np.testing.assert_allclose(st.compute_stats()[0], full_mean, rtol=1e-7)
    np.testing.assert_allclose(st.compute_stats()[1], full_std, rtol=1e-6)
    assert n == st.compute_stats()[2] == 51 * 24
    # a store whose statistics are stale (interrupted run) computes them on the fly
    doc = json.loads((tmp_path / "s" / "manifest.json").read_text())
    doc["stats"]["fingerprint"] = "stale"
    doc["stats"]["mean"] = [0.0] * 16
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(doc))
    np.testing.assert_allclose(MelStore.open(tmp_path / "s").stats()[0], mean, rtol=1e-6)


def test_uncommitted_rows_are_invisible_and_overwritten(tmp_path: Path,
                                                        files: list[NewFile]) -> None:
    store = tmp_path / "s"
    build(store, files[:2])
    w = MelStoreWriter.create_or_open(store)
    w.append([new_file("z/9.wav", 7, 99)])  # written, never committed: a crash
    w.close()
    st = MelStore.open(store)
    assert len(st) == 5 and "z" not in st.classes
    # the next writer starts at the committed row count and overwrites the orphan rows
    build(store, files[2:])
    build(tmp_path / "clean", files)
    a, b = MelStore.open(store), MelStore.open(tmp_path / "clean")
    np.testing.assert_array_equal(a.load()[0], b.load()[0])
    assert a.fingerprint == b.fingerprint and a.row_sources() == b.row_sources()
    assert a.manifest.rows == 51  # the orphan rows were reused, not appended after


def test_reader_snapshot_while_writer_appends(tmp_path: Path, files: list[NewFile]) -> None:
    store = tmp_path / "s"
    build(store, files[:2])
    reader = MelStore.open(store)
    before = reader.load()[0]
    w = MelStoreWriter.create_or_open(store)
    w.append(files[2:])
    w.commit()
    np.testing.assert_array_equal(reader.load()[0], before)  # committed rows never move
    w.finalize()
    w.close()
    assert len(MelStore.open(store)) == 51


def test_replace_and_remove_keep_rows_append_only(tmp_path: Path,
                                                  files: list[NewFile]) -> None:
    store = tmp_path / "s"
    build(store, files)
    fp0 = MelStore.open(store).fingerprint
    w = MelStoreWriter.create_or_open(store)
    w.append([new_file("a/1.wav", 4, 77)])  # replaced content
    w.remove(["c/x.wav"])
    w.touch("b/1.wav", 5, 5)  # same content, new stat: no content change
    w.finalize()
    w.close()
    st = MelStore.open(store)
    assert len(st) == 51 - 2 - 5 + 4 and st.manifest.rows == 55  # 6 dead rows kept
    assert st.fingerprint != fp0
    assert st.info()["dead_rows"] == 7 and st.class_counts()["c"] == 0
    np.testing.assert_array_equal(st.read_rows([40, 41, 42, 43]), new_file("a/1.wav", 4, 77).mels)


def test_fingerprint_changes_iff_content_or_config(tmp_path: Path,
                                                   files: list[NewFile]) -> None:
    build(tmp_path / "a", files)
    build(tmp_path / "b", list(reversed(files)), batch=1)
    fa, fb = MelStore.open(tmp_path / "a").fingerprint, MelStore.open(tmp_path / "b").fingerprint
    assert fa != fb  # reversed order gives other class numbers: different content
    w = MelStoreWriter.create_or_open(tmp_path / "a")
    w.touch("a/0.wav", 1, 2)
    w.finalize()
    w.close()
    assert MelStore.open(tmp_path / "a").fingerprint == fa


def test_iter_batches_deterministic_complete_and_bounded(tmp_path: Path,
                                                         files: list[NewFile]) -> None:
    build(tmp_path / "s", files)
    st = MelStore.open(tmp_path / "s")
    mels, labels = st.load()

    def epoch(seed: int, ep: int, **kw: object) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(st.iter_batches(8, seed=seed, epoch=ep, **kw))

    a, b = epoch(0, 0), epoch(0, 0)
    assert len(a) == 51 // 8 and all(x.shape == (8, 16, 24) and y.dtype == np.int64
                                      for x, y in a)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    c = epoch(0, 1)
    assert not all(np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(a, c, strict=True))
    full = epoch(3, 0, drop_last=False, chunk_rows=4, window_rows=8)
    xs = np.concatenate([x for x, _ in full])
    ys = np.concatenate([y for _, y in full])
    assert len(xs) == 51
    # every live row exactly once, with its own label
    key = {mels[i].tobytes(): labels[i] for i in range(len(mels))}
    assert len(key) == 51
    assert sorted(x.tobytes() for x in xs) == sorted(key)
    assert all(key[x.tobytes()] == y for x, y in zip(xs, ys, strict=True))


def test_load_budget_and_bad_stores(tmp_path: Path, files: list[NewFile]) -> None:
    build(tmp_path / "s", files)
    st = MelStore.open(tmp_path / "s")
    with pytest.raises(StoreError, match="over the .* budget; stream it"):
        st.load(max_bytes=1000)
    assert st.load(max_bytes=st.nbytes_live())[0].shape[0] == 51
    with pytest.raises(StoreError, match="no mel store at"):
        MelStore.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="not a mel store"):
        MelStore.open(tmp_path / "plain")
    with pytest.raises(StoreError, match="not a mel store; use a new --store"):
        MelStoreWriter.create_or_open(tmp_path / "plain", MEL)
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable"):
        MelStore.open(tmp_path / "s")


def test_mel_config_change_refused_and_kept(tmp_path: Path, files: list[NewFile]) -> None:
    build(tmp_path / "s", files[:1])
    with pytest.raises(StoreError, match=r"n_mels 16 -> 32\); use a new --store") as e:
        MelStoreWriter.create_or_open(tmp_path / "s", {**MEL, "n_mels": 32})
    assert "\n" not in str(e.value)
    # no overrides (or the same ones) reuse the store's own configuration
    w = MelStoreWriter.create_or_open(tmp_path / "s", {"frames": 24})
    assert w.mel_config == MelConfig(**MEL)
    w.close()
    with pytest.raises(StoreError, match="unknown mel setting"):
        resolve_mel_config(None, {"n_melz": 3})
    with pytest.raises(StoreError, match="bad mel configuration"):
        resolve_mel_config(None, {"long_clip_policy": "stretch"})
    assert resolve_mel_config(None, None) == MelConfig()
    # checked as a whole, with whole numbers where counts are meant (never truncated)
    for bad, words in (({"f_min": 8000, "f_max": 100}, "f_max must be above f_min"),
                       ({"sample_rate": 8000, "f_max": 9000}, "f_max must be above"),
                       ({"n_mels": 64.5}, "n_mels must be a whole number"),
                       ({"frames": True}, "frames must be a whole number")):
        with pytest.raises(StoreError, match=f"bad mel configuration: {words}"):
            resolve_mel_config(None, bad)
    assert resolve_mel_config(None, {"n_mels": 64.0, "frames": "32"}).n_mels == 64


def test_second_writer_refused_while_locked(tmp_path: Path, files: list[NewFile]) -> None:
    build(tmp_path / "s", files[:1])
    with StoreLock(tmp_path / "s"):
        with pytest.raises(StoreBusyError, match="being written by another precompute") as e:
            MelStoreWriter.create_or_open(tmp_path / "s")
        assert "\n" not in str(e.value)
        assert len(MelStore.open(tmp_path / "s")) == 3  # readers are never blocked
    MelStoreWriter.create_or_open(tmp_path / "s").close()  # free again


def test_a_manifest_write_that_dies_midway_changes_nothing(tmp_path: Path,
                                                           files: list[NewFile]) -> None:
    from storage.atomic_files import TMP_PREFIX, atomic_write

    store = tmp_path / "s"
    build(store, files[:2])
    before = (store / "manifest.json").read_bytes()

    def dies(f: object) -> None:
        f.write(b'{"half": ')  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(store / "manifest.json", dies, durable=True)
    assert (store / "manifest.json").read_bytes() == before
    assert not list(store.glob(f"{TMP_PREFIX}*"))  # the temp file is removed on failure
    # a temp file of a writer killed outright (no chance to clean up) goes at the next open
    (store / f"{TMP_PREFIX}manifest.json.k1ll3d").write_bytes(b'{"half": ')
    MelStoreWriter.create_or_open(store, MEL).close()
    assert not list(store.glob(f"{TMP_PREFIX}*"))
    assert {f.path for f in MelStore.open(store).files()} == {f.path for f in files[:2]}


def test_the_manifest_is_plain_json_that_round_trips(tmp_path: Path) -> None:
    """Written with orjson (UTF-8, dataclass entries); any JSON reader gets every field."""
    from storage.store_manifest import read_manifest

    store = tmp_path / "s"
    build(store, [new_file("ключ/ü 1.wav", 2, 1), new_file("a/1.wav", 3, 2)])
    raw = (store / "manifest.json").read_bytes()
    doc = json.loads(raw.decode("utf-8"))  # the standard library reads it as it is
    assert "ключ/ü 1.wav".encode() in raw  # UTF-8, not \u escapes
    entry = next(e for e in doc["files"] if e["path"] == "ключ/ü 1.wav")
    assert entry == {"id": 0, "path": "ключ/ü 1.wav", "hash": "h1", "size": 101,
                     "mtime_ns": 1, "label": 0, "start": 0, "stop": 2, "sample_rate": 0,
                     "channels": 0, "samples": 0}
    m = read_manifest(store)
    assert m is not None and m.to_dict() == {**doc, "files": m.live_entries()}
    # the fingerprint (what retraining compares) is computed as before, not from these bytes
    assert doc["fingerprint"] == m.fingerprint() == MelStore.open(store).fingerprint
    m.stats = {"count": np.int64(3), "mean": [np.float64(0.5)], "std": [np.float32(2.0)]}
    assert json.loads(m.to_json())["stats"] == {"count": 3, "mean": [0.5], "std": [2.0]}
    (store / "manifest.json").write_bytes(raw[:-3])  # torn (never by a commit): refused
    with pytest.raises(ValueError):
        read_manifest(store)
