"""`store-info` from the manifest alone (`storage.store_summary.quick_info`): the same answer
as opening the store's arrays, and no answer whenever it cannot vouch for one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from store_fixtures import build, new_file, with_dead_rows

from audio_wgan.cli import main
from storage.mel_store import MelStore, StoreError
from storage.store_manifest import commit_manifest, read_manifest
from storage.store_summary import quick_info
from storage.store_writer import MelStoreWriter


def full_info(store: Path) -> dict:
    with MelStore.open(store) as st:
        return st.info()


def test_same_answer_as_the_arrays(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with_dead_rows(store)
    quick = quick_info(store)
    assert quick is not None
    assert quick == full_info(store)
    assert quick["dead_rows"] > 0 and quick["classes"] == {"a": 44, "b": 4, "c": 0}


def test_same_answer_after_compaction(tmp_path: Path) -> None:
    """A compacted store keeps its arrays under gen1/: the quick path finds them there."""
    store = tmp_path / "s"
    with_dead_rows(store)
    with MelStoreWriter.create_or_open(store) as w:
        w.compact()
    quick = quick_info(store)
    assert quick is not None and quick["generation"] == 1
    assert quick == full_info(store)


def test_a_lost_chunk_leaves_the_answer_to_the_full_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s"
    with_dead_rows(store)
    os.remove(store / "labels" / "c" / "0")
    assert quick_info(store) is None
    assert main(["store-info", str(store)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "labels" in last and "missing" in last


def test_stale_statistics_leave_the_answer_to_the_arrays(tmp_path: Path) -> None:
    """Statistics of another fingerprint (an interrupted run) are computed from the rows,
    which only the full path can do; the printed values are then the freshly computed."""
    store = tmp_path / "s"
    with_dead_rows(store)
    m = read_manifest(store)
    m.stats = {**m.stats, "fingerprint": "something else", "mean": [0.0] * 16}
    commit_manifest(store, m)
    assert quick_info(store) is None
    info = full_info(store)
    assert info["stats"]["mean_db"] != 0.0


def test_json_output_is_the_full_answer(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s"
    build(store, [new_file("a/x.wav", 3, 1), new_file("b/y.wav", 2, 2)])
    assert main(["store-info", str(store), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = json.loads(json.dumps(full_info(store), default=str))
    assert printed == expected


def test_not_a_store_is_refused_as_a_full_open_refuses(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    for where in (tmp_path, tmp_path / "absent", tmp_path / "junk"):
        with pytest.raises(StoreError) as quick:
            quick_info(where)
        with pytest.raises(StoreError) as full:
            MelStore.open(where)
        assert str(quick.value) == str(full.value)
