"""A store only ever gains or replaces rows through a run that succeeds: a mistyped, emptied,
half-mounted or unreadable data folder, or one whose clips all went bad, never costs a user
their store; links back into the data folder never store clips twice; a planted link never
redirects the store's lock outside it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile_checks import refused

from clips.scan import LINK_BACK, plan_changes, scan_data_dir
from storage.mel_store import MelStore

MEL_ARGS = ["--sample-rate", "8000", "--n-fft", "256", "--hop-length", "64", "--n-mels", "32",
            "--frames", "32"]

pytestmark = pytest.mark.usefixtures("prefect_harness")


def precompute(data: Path, store: Path, *extra: str) -> int:
    from audio_wgan.cli import main

    return main(["precompute", str(data), "--store", str(store), *MEL_ARGS, *extra])


def live(store: Path) -> tuple[int, set[str]]:
    with MelStore.open(store) as st:
        return len(st), {e.path for e in st.files()}


@pytest.fixture
def store(tmp_path: Path, write_tone: Callable[..., Path]) -> Path:
    """A store of 4 files (2 classes, 8 rows) made from tmp_path/d."""
    for i in range(4):
        write_tone(f"{'ab'[i % 2]}/t{i}.wav", seconds=0.5, freq=300 + 100 * i,
                   root=tmp_path / "d")
    s = tmp_path / "s.zarr"
    assert precompute(tmp_path / "d", s) == 0
    assert live(s)[0] == 8
    return s


@pytest.mark.parametrize("compact", ["auto", "always"])
def test_an_empty_or_wrong_folder_leaves_the_store_untouched(
        tmp_path: Path, store: Path, write_tone: Callable[..., Path],
        capsys: pytest.CaptureFixture[str], compact: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk" / "a").mkdir(parents=True)
    (tmp_path / "junk" / "a" / "x.wav").write_bytes(b"not audio")
    write_tone("a/other.wav", seconds=0.5, root=tmp_path / "other")  # 1 new, drops 4 of 4
    for folder in ("empty", "junk", "other"):
        line = refused(capsys, ["precompute", str(tmp_path / folder), "--store", str(store),
                                "--compact", compact], store)
        assert line.startswith("audio-wgan precompute: error: this run would drop 4 of the "
                               "store's 4 files"), line
        assert "--allow-shrink" in line
    assert live(store) == (8, {"a/t0.wav", "a/t2.wav", "b/t1.wav", "b/t3.wav"})


def test_a_small_drop_is_made_and_stated_a_large_one_needs_allow_shrink(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d"
    (data / "a" / "t0.wav").unlink()
    capsys.readouterr()
    assert precompute(data, store) == 0
    out = capsys.readouterr().out
    assert f"dropped 1 files gone from {data}: a/t0.wav" in out
    assert live(store)[1] == {"a/t2.wav", "b/t1.wav", "b/t3.wav"}
    (data / "b" / "t1.wav").unlink()
    (data / "b" / "t3.wav").unlink()
    line = refused(capsys, ["precompute", str(data), "--store", str(store)], store)
    assert "would drop 2 of the store's 3 files" in line
    assert precompute(data, store, "--allow-shrink", "--json") == 0
    assert live(store) == (2, {"a/t2.wav"})


def test_clips_that_all_went_bad_drop_nothing(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same names, garbage content: every kept file is rejected, so the run fails (one
    line, exit 2) and the store still serves every row it had."""
    for p in (tmp_path / "d").rglob("*.wav"):
        p.write_bytes(b"garbage, not audio at all")
    capsys.readouterr()
    assert precompute(tmp_path / "d", store) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("audio-wgan precompute: error: no usable clip left"), line
    assert live(store) == (8, {"a/t0.wav", "a/t2.wav", "b/t1.wav", "b/t3.wav"})


def test_a_folder_that_cannot_be_listed_drops_nothing(
        tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A class folder whose listing fails (I/O error of a half-mounted share; injected, as
    CI runs as root) is reported unreadable and its kept files are not 'gone'."""
    real_scandir = os.scandir
    broken = str(tmp_path / "d" / "b")

    def scandir(path: object = ".") -> object:
        if os.fspath(path) == broken:
            raise OSError(5, "Input/output error", broken)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = scan_data_dir(tmp_path / "d")
    monkeypatch.undo()
    assert scan.unreadable == [{"path": "b/", "reason": "folder unreadable: Input/output "
                                "error"}]
    with MelStore.open(store) as st:
        known = {e.path: (0, 0, e.hash) for e in st.files()}
    assert plan_changes(scan, known).removed == []


def test_links_back_into_the_data_folder_are_not_followed(
        tmp_path: Path, write_tone: Callable[..., Path]) -> None:
    data = tmp_path / "d"
    write_tone("a/x.wav", seconds=0.5, root=data)
    write_tone("b/y.wav", seconds=0.5, freq=600, root=data)
    (data / "a" / "loop").symlink_to("../../d", target_is_directory=True)
    (data / "a" / "sib").symlink_to("../b", target_is_directory=True)
    (data / "up").symlink_to("..", target_is_directory=True)
    (data / "c").symlink_to("b", target_is_directory=True)
    scan = scan_data_dir(data)
    assert [f.path for f in scan.files] == ["a/x.wav", "b/y.wav"]
    ignored = {r["path"] for r in scan.ignored if r["reason"] == LINK_BACK}
    assert ignored == {"a/loop/", "a/sib/", "up/", "c/"}
    assert scan.class_dirs == ["a", "b"]


def test_dangling_links_and_unreachable_folders_drop_nothing(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Class `b` moved onto a drive that is now unplugged (its folder a dangling link), and
    a sub-folder of `a` the same: reported unreadable, every kept row stays."""
    import shutil

    data = tmp_path / "d"
    shutil.move(data / "b", tmp_path / "usb-b")
    (data / "b").symlink_to(tmp_path / "unplugged" / "b", target_is_directory=True)
    (data / "a" / "sub").symlink_to(tmp_path / "unplugged" / "sub", target_is_directory=True)
    scan = scan_data_dir(data)
    assert {u["path"] for u in scan.unreadable} == {"b/", "a/sub/"}
    assert precompute(data, store) == 0
    assert live(store) == (8, {"a/t0.wav", "a/t2.wav", "b/t1.wav", "b/t3.wav"})


def test_a_class_linked_into_a_hidden_folder_and_shared_targets(
        tmp_path: Path, write_tone: Callable[..., Path]) -> None:
    """A link into DATA_DIR's hidden part is data (never scanned otherwise); two class
    links to one outside folder store it once, under the first class."""
    data = tmp_path / "d"
    write_tone(".src/e/x.wav", seconds=0.5, root=data)
    write_tone("shared/y.wav", seconds=0.5, freq=600, root=tmp_path)
    (data / "e").symlink_to(data / ".src" / "e", target_is_directory=True)
    (data / "f").symlink_to(tmp_path / "shared", target_is_directory=True)
    (data / "g").symlink_to(tmp_path / "shared", target_is_directory=True)
    scan = scan_data_dir(data)
    assert [f.path for f in scan.files] == ["e/x.wav", "f/y.wav"]
    assert {"path": "g/", "reason": "the same folder as in class f: not stored twice"} in \
        scan.ignored


@pytest.mark.parametrize("name", ["x" * 250, "new\nline", "tab\there", "bell\x07",
                                  "para\u2029graph"])
def test_class_names_no_model_can_carry_are_refused_at_precompute(
        tmp_path: Path, write_tone: Callable[..., Path], name: str) -> None:
    data = tmp_path / "d"
    write_tone("ok/x.wav", seconds=0.5, root=data)
    write_tone("tmp/y.wav", seconds=0.5, freq=600, root=data)
    os.rename(data / "tmp", data / name)
    scan = scan_data_dir(data)
    assert [f.path for f in scan.files] == ["ok/x.wav"]
    (entry,) = [r for r in scan.ignored if r["path"] == name + "/"]
    assert entry["reason"].startswith("class folder name ")


@pytest.mark.parametrize("name", ["می\u200cخواهم", "👩\u200d💻", "no\u00a0break", "café"])
def test_class_names_with_joiners_and_accents_are_classes(
        tmp_path: Path, write_tone: Callable[..., Path], name: str) -> None:
    data = tmp_path / "d"
    write_tone(f"{name}/x.wav", seconds=0.5, root=data)
    assert scan_data_dir(data).class_dirs == [name]


def test_a_link_planted_as_the_lock_file_is_refused(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "victim.txt"
    outside.write_text("precious\n")
    lock = store / ".precompute.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(outside)
    line = refused(capsys, ["precompute", str(tmp_path / "d"), "--store", str(store)],
                   outside)
    assert "is a link" in line, line
    assert outside.read_text() == "precious\n"
    assert live(store)[0] == 8


def test_finite_samples_that_overflow_the_mel_are_rejected_by_name(
        tmp_path: Path, write_tone: Callable[..., Path]) -> None:
    """A float WAV of ~1e30 samples is finite but overflows the log-mel: the file is
    rejected with its reason, and the store's statistics stay finite."""
    import numpy as np
    import soundfile as sf

    from flows.precompute import precompute as flow

    data = tmp_path / "d"
    write_tone("a/ok.wav", seconds=0.5, root=data)
    (data / "b").mkdir()
    sf.write(data / "b" / "huge.wav", np.full(4000, 1e30, dtype=np.float32), 8000,
             subtype="FLOAT")
    write_tone("b/fine.wav", seconds=0.5, freq=700, root=data)
    mel = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "frames": 32}
    s = flow(str(data), str(tmp_path / "s"), mel=mel)
    assert s["rejected"] == [{"path": "b/huge.wav", "reason": "its log-mel is not finite "
                              "(samples far outside [-1, 1]?)"}]
    with MelStore.open(tmp_path / "s") as st:
        mels, _ = st.load()
        mean, std = st.stats()
        assert np.isfinite(mels.astype(np.float32)).all()
        assert np.isfinite(mean).all() and np.isfinite(std).all()


def test_a_kept_file_that_fails_for_another_reason_than_its_bytes_keeps_its_rows(
        tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept file touched (so read again) that then cannot be opened (PermissionError,
    injected: CI runs as root) is reported, and its stored rows stay served."""
    import builtins

    import clips.features as af
    from flows.precompute import precompute as flow

    locked = tmp_path / "d" / "a" / "t0.wav"
    os.utime(locked, ns=(1, 1))

    def guarded_open(file: object, *args: object, **kwargs: object) -> object:
        if os.fspath(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(af, "open", guarded_open, raising=False)
    s = flow(str(tmp_path / "d"), str(store), mel={
        "sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "frames": 32})
    assert [r["path"] for r in s["rejected"]] == ["a/t0.wav"]
    assert s["removed_files"] == 0
    assert live(store) == (8, {"a/t0.wav", "a/t2.wav", "b/t1.wav", "b/t3.wav"})
