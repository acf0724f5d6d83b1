"""Careless and hostile input to precompute: file names that are not UTF-8, a mel
configuration refused before anything is created, a class folder linked from outside
DATA_DIR, an unreadable file (PermissionError injected: CI runs as root), and GPU rows
against CPU rows where a CUDA GPU exists."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from clips.scan import LINK_BACK
from storage.mel_store import MelStore

MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "frames": 32}
MEL_ARGS = ["--sample-rate", "8000", "--n-fft", "256", "--hop-length", "64", "--n-mels", "32",
            "--frames", "32"]
BAD_NAME = os.fsdecode(b"\xff\xfe.wav")  # not UTF-8: a str with surrogate escapes

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run(data: Path, store: Path, **kw: object) -> dict:
    from flows.precompute import precompute

    return precompute(str(data), str(store), mel=kw.pop("mel", MEL), **kw)


def last_err_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines, "nothing on stderr"
    return lines[-1]


def test_names_that_are_not_utf8_are_stored_reported_and_rerun(
        tmp_path: Path, write_tone: Callable[..., Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    """A file name with undecodable bytes is stored (escaped, lossless) and splits for
    training; a class folder whose name is not UTF-8 is no class (a model carries its class
    names in JSON and tags): ignored, with the reason."""
    from audio_wgan.cli import main
    from gan.classifier import split_by_source

    data = tmp_path / "d"
    write_tone("dog/ok.wav", seconds=0.5, root=data)
    bad_class = os.fsdecode(b"cat\xe9")  # a Latin-1 folder name
    # soundfile cannot write to such names: write, then rename to the bytes
    os.rename(write_tone("dog/t1.wav", seconds=0.5, freq=600, root=data),
              os.fsencode(data / "dog") + b"/\xff\xfe.wav")
    write_tone("tmp/c.wav", seconds=0.5, freq=800, root=data)
    os.rename(data / "tmp", os.fsencode(data) + b"/cat\xe9")
    (data / "dog" / os.fsdecode(b"junk\xff.wav")).write_bytes(b"not audio")
    assert os.path.exists(os.fsencode(data / "dog") + b"/\xff\xfe.wav")
    store = tmp_path / "s"
    s = run(data, store)
    assert s["files"] == 2 and s["rows"] == 4  # the valid files of the batch are committed
    assert [r["path"] for r in s["rejected"]] == [os.fsdecode(b"dog/junk\xff.wav")]
    assert {"path": f"{bad_class}/", "reason": "class folder name is not UTF-8: rename the "
            "folder"} in s["ignored"]
    with MelStore.open(store) as st:
        assert {e.path for e in st.files()} == {"dog/ok.wav", f"dog/{BAD_NAME}"}
        assert set(st.classes) == {"dog"}
        sources = [e.path for e in st.files()]
    parts = split_by_source(sources * 2, np.zeros(4, dtype=np.int64))  # train's split
    assert len(parts) == 4
    raw = (store / "manifest.json").read_bytes()
    assert b'"dog/\\\\xff\\\\xfe.wav"' in raw and b'"cat\\\\xe9/"' in raw  # escaped, lossless
    again = run(data, store)  # re-run: the names match what the scan finds
    # nothing read: the rejected file (not audio: its bytes decide) is remembered by name
    assert again["processed_files"] == 0 and not again["changed"]
    assert [r["path"] for r in again["rejected"]] == [os.fsdecode(b"dog/junk\xff.wav")]
    assert main(["store-info", str(store)]) == 0
    text = capsys.readouterr().out
    assert "dog/junk\\xff.wav:" in text and "cat\\xe9/" in text
    os.unlink(os.fsencode(data / "dog") + b"/\xff\xfe.wav")  # a deleted file stops serving
    assert run(data, store)["removed_files"] == 1


def test_a_refused_mel_configuration_creates_nothing(
        tmp_path: Path, write_tone: Callable[..., Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main

    write_tone("c/a.wav", seconds=0.5, root=tmp_path / "d")
    for args in (["--f-min", "8000", "--f-max", "100"], ["--f-max", "9000"],
                 ["--n-mels", "4000"]):
        store = tmp_path / "new" / "s"
        assert main(["precompute", str(tmp_path / "d"), "--store", str(store), *MEL_ARGS,
                     *args]) == 2, args
        line = last_err_line(capsys)
        assert line.startswith("audio-wgan precompute: error:"), line
        assert not (tmp_path / "new").exists(), args  # no store, no stub, no parent
    # an existing store is left exactly as it was
    store = tmp_path / "s"
    run(tmp_path / "d", store)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    manifest = (store / "manifest.json").read_bytes()
    assert main(["precompute", str(tmp_path / "d"), "--store", str(store), "--f-min", "8000",
                 "--f-max", "100"]) == 2
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert (store / "manifest.json").read_bytes() == manifest
    # a store path under a regular file: one line, nothing made
    (tmp_path / "file").write_text("x")
    assert main(["precompute", str(tmp_path / "d"), "--store", str(tmp_path / "file" / "s"),
                 *MEL_ARGS]) == 2
    assert last_err_line(capsys).startswith("audio-wgan precompute: error:")
    from storage.store_writer import MelStoreWriter, StoreError

    with pytest.raises(StoreError, match="cannot create the store .*file/s: Not a directory"):
        MelStoreWriter.create_or_open(tmp_path / "file" / "s", MEL)


def test_the_flow_refuses_an_untrainable_mel_configuration_as_a_deployment_would_send_it(
        tmp_path: Path, write_tone: Callable[..., Path]) -> None:
    """A deployment calls the flow without the CLI's checks: the flow refuses a shape no
    model trains on (frames not a multiple of 16) before the store is touched."""
    from tasks.precompute import PrecomputeError

    write_tone("c/a.wav", seconds=0.5, root=tmp_path / "d")
    with pytest.raises(PrecomputeError, match="mel configuration refused: .*divisible by 16"):
        run(tmp_path / "d", tmp_path / "new" / "s", mel={**MEL, "frames": 50})
    assert not (tmp_path / "new").exists()


def test_a_class_folder_linked_from_outside_data_dir_is_followed_and_reported(
        tmp_path: Path, write_tone: Callable[..., Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main

    data = tmp_path / "d"
    write_tone("inside/a.wav", seconds=0.5, root=data)
    write_tone("elsewhere/b.wav", seconds=0.5, freq=700, root=tmp_path / "outside")
    (data / "linked").symlink_to(tmp_path / "outside" / "elsewhere", target_is_directory=True)
    (data / "inner").symlink_to(data / "inside", target_is_directory=True)  # stays inside
    s = run(data, tmp_path / "s")
    # a link back into DATA_DIR would store inside's clips twice, as class "inner"
    assert s["classes"] == {"inside": 2, "linked": 2}
    assert {"path": "inner/", "reason": LINK_BACK} in s["ignored"]
    target = str((tmp_path / "outside" / "elsewhere").resolve())
    assert s["linked_classes"] == [{"class": "linked", "target": target}]
    with MelStore.open(tmp_path / "s") as st:
        assert st.info()["linked_classes"] == [{"class": "linked", "target": target}]
    assert main(["store-info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert f"linked class folders (outside DATA_DIR): linked -> {target}" in out


def test_an_unreadable_file_is_rejected_with_its_reason(
        tmp_path: Path, write_tone: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 0 does not stop root (CI), so the file's open raises PermissionError as it
    would for another user; the rest of the run goes on."""
    import clips.features as af

    write_tone("c/ok.wav", seconds=0.5, root=tmp_path / "d")
    locked = write_tone("c/locked.wav", seconds=0.5, freq=900, root=tmp_path / "d")

    def guarded_open(file: object, *args: object, **kwargs: object) -> object:
        if os.fspath(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(af, "open", guarded_open, raising=False)
    s = run(tmp_path / "d", tmp_path / "s", workers=2)
    assert s["rejected"] == [{"path": "c/locked.wav", "reason": "unreadable: permission denied"}]
    assert s["files"] == 1 and s["rows"] == 2
    monkeypatch.undo()
    again = run(tmp_path / "d", tmp_path / "s")  # readable again: taken in on the next run
    assert again["rejected"] == [] and again["files"] == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_rows_equal_cpu_rows(tmp_path: Path, write_tone: Callable[..., Path]) -> None:
    from mel_checks import assert_same_power

    data = tmp_path / "d"
    for i in range(4):
        write_tone(f"c{i % 2}/t{i}.wav", seconds=0.7, sr=16000, freq=300 + 150 * i, root=data)
    gpu = run(data, tmp_path / "gpu", device="cuda")
    cpu = run(data, tmp_path / "cpu", device="cpu")
    assert gpu["device"].startswith("cuda") and cpu["device"] == "cpu"
    assert gpu["fingerprint"] == cpu["fingerprint"]  # same files, labels and row counts
    with MelStore.open(tmp_path / "gpu") as a, MelStore.open(tmp_path / "cpu") as b:
        ma, mb = a.load()[0], b.load()[0]
        assert ma.shape == mb.shape and np.isfinite(ma.astype(np.float32)).all()
        assert_same_power(ma, mb)  # equal up to the GPU FFT's rounding
