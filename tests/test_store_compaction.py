"""Compaction: dead rows are dropped, readers see the same rows, open readers keep their
arrays, and a compaction killed at any moment leaves a store that serves the same rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from store_fixtures import MEL, build, new_file, with_dead_rows

from gan.spectral import MelConfig
from storage.mel_store import MelStore, StoreError, rows_per_chunk
from storage.store_lock import StoreLock
from storage.store_writer import MelStoreWriter

ROOT = Path(__file__).resolve().parents[1]
CHUNK = rows_per_chunk(MelConfig.from_dict(MEL))  # rows per mel chunk of these stores


def snapshot(store: Path) -> dict[str, Any]:
    """Everything a reader is served, read through a fresh MelStore."""
    with MelStore.open(store) as st:
        mels, labels = st.load()
        mean, std = st.stats()
        return {"mels": mels, "labels": labels, "sources": st.row_sources(),
                "offsets": st.offsets(), "classes": st.classes, "fingerprint": st.fingerprint,
                "mean": mean, "std": std, "files": [(e.path, e.hash) for e in st.files()]}


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


def listing(store: Path) -> list[str]:
    return sorted(os.listdir(store))


def test_compact_drops_dead_rows_and_serves_the_same(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with_dead_rows(store)
    before = snapshot(store)
    with MelStore.open(store) as st:
        assert st.info()["dead_rows"] == 7 and st.manifest.rows == 55
        bytes_before = st.disk_bytes()
    with MelStoreWriter.create_or_open(store) as w:
        done = w.compact()
    assert done == {"dropped_rows": 7, "rows": 48, "generation": 1, "old_generation_kept": 0}
    assert_same(snapshot(store), before)
    with MelStore.open(store) as st:
        info = st.info()
        assert (info["dead_rows"], info["generation"], st.manifest.rows) == (0, 1, 48)
        assert st.disk_bytes() < bytes_before
    # the root arrays (generation 0) are gone; the group's attributes point at gen1/
    assert "mels" not in listing(store) and "gen1" in listing(store)
    assert not [n for n in listing(store) if n.startswith(".readers-gen0")]
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    assert attrs["generation"] == 1 and attrs["arrays"] == "gen1/"
    assert attrs["format_version"] == 2
    # appending after a compaction: the store equals one built from the same files
    with MelStoreWriter.create_or_open(store) as w:
        w.append([new_file("d/n.wav", 6, 9), new_file("a/0.wav", 2, 10)])
        w.finalize(compact=False)
    build(tmp_path / "fresh", [new_file("b/2.wav", 3, 2), new_file("a/1.wav", 4, 77),
                               new_file("b/1.wav", 1, 3), new_file("a/0.wav", 2, 10),
                               new_file("d/n.wav", 6, 9)])
    got, fresh = snapshot(store), snapshot(tmp_path / "fresh")
    np.testing.assert_array_equal(got["mels"], fresh["mels"])
    assert got["sources"] == fresh["sources"]
    np.testing.assert_array_equal(got["offsets"], fresh["offsets"])
    np.testing.assert_allclose(got["mean"], fresh["mean"], rtol=1e-6)


def test_an_open_reader_keeps_its_arrays_until_it_closes(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with_dead_rows(store)
    before = snapshot(store)
    reader = MelStore.open(store)
    with MelStoreWriter.create_or_open(store) as w:
        assert w.compact()["old_generation_kept"] == 1
    assert "mels" in listing(store)  # generation 0 stays while the reader has it open
    np.testing.assert_array_equal(reader.load()[0], before["mels"])
    np.testing.assert_array_equal(reader.offsets(), before["offsets"])
    reader.close()
    with pytest.raises(StoreError, match="was closed"):
        reader.load()
    MelStoreWriter.create_or_open(store).close()  # the next writer deletes it
    assert "mels" not in listing(store)
    assert_same(snapshot(store), before)
    # and consolidates again: Zarr tools that read the consolidated metadata do not see it
    consolidated = json.loads((store / "zarr.json").read_text())["consolidated_metadata"]
    assert "gen1/mels" in consolidated["metadata"] and "mels" not in consolidated["metadata"]


def test_a_reader_in_another_process_pins_its_generation_until_killed(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with_dead_rows(store)
    before = snapshot(store)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, '.'); "
         "from storage.mel_store import MelStore; st = MelStore.open(sys.argv[1]); "
         "print(len(st), flush=True); time.sleep(120)", str(store)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "48"
        with MelStoreWriter.create_or_open(store) as w:
            assert w.compact()["old_generation_kept"] == 1
        MelStoreWriter.create_or_open(store).close()
        assert "mels" in listing(store)  # still leased
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    MelStoreWriter.create_or_open(store).close()  # the kernel dropped the dead reader's lease
    assert "mels" not in listing(store)
    assert_same(snapshot(store), before)


def test_automatic_compaction_once_dead_rows_are_worth_it(tmp_path: Path) -> None:
    store = tmp_path / "s"
    build(store, [new_file("a/big.wav", CHUNK + 10, 1), new_file("b/small.wav", 100, 2),
                  new_file("b/other.wav", 2 * CHUNK, 3)])
    with MelStoreWriter.create_or_open(store) as w:  # under a chunk of dead rows: kept
        w.remove(["b/small.wav"])
        fin = w.finalize()
    assert fin["compacted_rows"] == 0 and fin["stored_rows"] == 3 * CHUNK + 110
    with MelStoreWriter.create_or_open(store) as w:  # a chunk and over 25% of the store
        w.append([new_file("a/big.wav", 3, 4)])
        fin = w.finalize()
    assert fin["compacted_rows"] == CHUNK + 10 + 100
    assert fin["stored_rows"] == fin["rows"] == 2 * CHUNK + 3
    with MelStore.open(store) as st:
        assert st.info()["dead_rows"] == 0 and st.manifest.generation == 1
        np.testing.assert_array_equal(st.read_rows([0, 1, 2]), new_file("a/big.wav", 3, 4).mels)


def compact_in_subprocess(store: Path, kill_at: str | None) -> subprocess.CompletedProcess:
    """`audio-wgan compact` copying one chunk per block (so that it has several)."""
    env = dict(os.environ)
    env.pop("AUDIO_WGAN_KILL_AT", None)
    if kill_at:
        env["AUDIO_WGAN_KILL_AT"] = kill_at
    code = ("import sys; import storage.store_writer as w; w.COPY_BYTES = 0; "
            "from audio_wgan.cli import main; sys.exit(main(['compact', sys.argv[1]]))")
    return subprocess.run([sys.executable, "-c", code, str(store)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.integration
@pytest.mark.parametrize("kill_at", ["compact_block:2", "compact_copied:1",
                                     "compact_committed:1"])
def test_sigkill_during_compaction_then_rerun(tmp_path: Path, kill_at: str) -> None:
    store = tmp_path / "s"
    build(store, [new_file("a/0.wav", CHUNK, 1), new_file("b/1.wav", 2 * CHUNK + 5, 2),
                  new_file("a/2.wav", CHUNK - 3, 3), new_file("c/3.wav", 7, 4)])
    with MelStoreWriter.create_or_open(store) as w:
        w.remove(["a/0.wav"])
        w.finalize(compact=False)
    before = snapshot(store)
    p = compact_in_subprocess(store, kill_at)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert_same(snapshot(store), before)  # readers are served the same at once
    with MelStore.open(store) as st:
        assert st.verify()["ok"]  # whichever generation is committed, its chunks verify
    p = compact_in_subprocess(store, None)
    assert p.returncode == 0, p.stderr
    assert_same(snapshot(store), before)
    with MelStore.open(store) as st:
        gen = st.manifest.generation
        assert st.info()["dead_rows"] == 0
        v = st.verify()
        assert v["ok"] and v["without_checksum"] == 0  # the copy has checksums of its own
    # only the committed generation is left: no partial copy, no old arrays, no stray lease
    assert [n for n in listing(store) if n.startswith("gen") or n in ("mels", "labels")] \
        == [f"gen{gen}"]
    assert [n for n in listing(store) if n.startswith(".readers")] in (
        [], [f".readers-gen{gen}.lock"])
    assert not list(store.rglob("*.partial")) and not list(store.glob(".tmp-*"))


def test_compact_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main

    store = tmp_path / "s"
    with_dead_rows(store)
    assert main(["compact", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("compact: dropped 7 dead rows, 48 rows kept;") and "MB ->" in out
    assert main(["compact", str(store), "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["dropped_rows"] == 0 and done["rows"] == 48
    assert main(["compact", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("audio-wgan compact: error: no mel store at") and "\n" not in err
    with StoreLock(store):  # a precompute is writing: refused in one line
        assert main(["compact", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is being written by another precompute" in err and "\n" not in err


def test_a_failed_copy_leaves_the_store_unchanged(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import storage.store_writer as sw

    store = tmp_path / "s"
    with_dead_rows(store)
    before = snapshot(store)

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sw, "_copy_rows", full_disk)
    with MelStoreWriter.create_or_open(store) as w, \
            pytest.raises(StoreError, match=r"failed \(No space left on device\); the store "
                          "is unchanged"):
        w.compact()
    assert "gen1" not in listing(store)
    with MelStoreWriter.create_or_open(store) as w:  # at the end of a precompute: reported
        w.append([new_file("d/n.wav", 2, 9)])
        fin = w.finalize(compact=True)
    assert fin["compacted_rows"] == 0 and "No space left" in fin["compaction_error"]
    after = snapshot(store)
    assert after["sources"] == before["sources"] + ["d/n.wav"] * 2
    np.testing.assert_array_equal(after["mels"][:-2], before["mels"])


def test_a_reader_that_read_the_manifest_just_before_a_compaction_moves_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import storage.mel_store as ms
    from storage.store_manifest import read_manifest

    store = tmp_path / "s"
    with_dead_rows(store)
    before = snapshot(store)
    stale = read_manifest(store)  # generation 0, as a reader saw it just before...
    with MelStoreWriter.create_or_open(store) as w:
        w.compact()  # ...a compaction committed generation 1 and deleted generation 0
    assert "mels" not in listing(store)
    reads = iter([stale])
    monkeypatch.setattr(ms, "read_manifest", lambda p: next(reads, None) or read_manifest(p))
    with MelStore.open(store) as st:  # leases 0, sees the manifest moved on, leases 1
        monkeypatch.undo()
        assert st.manifest.generation == 1
        with MelStoreWriter.create_or_open(store) as w:
            assert w.compact()["old_generation_kept"] == 1  # the reader holds generation 1
        np.testing.assert_array_equal(st.load()[0], before["mels"])
    MelStoreWriter.create_or_open(store).close()
    assert [n for n in listing(store) if n.startswith(".readers-gen0")] == []  # cleaned up
