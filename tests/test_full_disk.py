"""A full disk (a real tmpfs that fills up) ends a command in one line with exit 2 and
leaves no empty or truncated file: clips, plots and thumbnails appear whole or not at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hostile_checks import refused
from registry_fixtures import make_bundle

from storage.atomic_files import TMP_PREFIX, atomic_wav


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def fill(path: Path) -> None:
    """Write until the kernel says the disk is full."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_wav_or_a_plot_that_does_not_fit_leaves_nothing(full_disk: Path) -> None:
    from gan.spectral import MelConfig
    from report.plots import plot_mel_grid, save_mel_thumbnail

    with pytest.raises(OSError):
        atomic_wav(full_disk / "big.wav", np.zeros(400_000, dtype=np.float32), 16000)
    fill(full_disk / "filler")
    db = np.random.default_rng(0).normal(-40, 10, (4, 32, 32)).astype(np.float32)
    with pytest.raises(OSError):
        plot_mel_grid(db, ["a", "b"], 2, MelConfig(n_mels=32, frames=32),
                      full_disk / "epoch_006.png", title="t")
    with pytest.raises(OSError):
        save_mel_thumbnail(db[0], full_disk / "thumb.png", -80.0, 0.0)
    assert leftovers(full_disk) == ["filler"]
    assert not list(full_disk.glob(f"{TMP_PREFIX}*"))


def test_generate_on_a_full_disk_exits_2_and_leaves_no_clip(
        tmp_path: Path, full_disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    out = full_disk / "out"
    line = refused(capsys, ["generate", "--model", str(bundle), "--class", "beep", "-n",
                            "512", "--out", str(out)], tmp_path / "bundle")
    assert line.startswith("audio-wgan generate: error:"), line
    assert leftovers(full_disk) == []


@pytest.mark.usefixtures("prefect_harness")
def test_precompute_onto_a_full_disk_is_one_line_and_the_store_stays_consistent(
        tmp_path: Path, full_disk: Path, write_tone, capsys: pytest.CaptureFixture[str]
        ) -> None:
    from audio_wgan.cli import main
    from storage.mel_store import MelStore

    data = tmp_path / "d"
    for i in range(40):
        write_tone(f"c{i % 2}/t{i}.wav", seconds=1.0, sr=16000, freq=200 + 20 * i, root=data)
    store = full_disk / "s.zarr"
    assert main(["precompute", str(data), "--store", str(store), "--batch-size", "4"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("audio-wgan precompute: error: No space left on device"), line
    if (store / "manifest.json").exists():  # what was committed reads back whole
        with MelStore.open(store) as st:
            mels, _ = st.load()
            assert len(mels) == len(st) and np.isfinite(mels.astype(np.float32)).all()


@pytest.mark.usefixtures("prefect_harness")
def test_train_onto_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(
        tmp_path: Path, full_disk: Path, write_tone, mlflow_uri: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main
    from flows.precompute import precompute
    from storage.checkpoints import list_checkpoints

    for i in range(6):
        write_tone(f"c{i % 2}/t{i}.wav", seconds=0.5, sr=8000, freq=300 + 90 * i,
                   root=tmp_path / "d")
    store = tmp_path / "s"
    precompute(str(tmp_path / "d"), str(store), mel={
        "sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "frames": 32})
    (full_disk / "ck").mkdir()
    fill(full_disk / "filler")
    code = main(["train", "--store", str(store), "--preset", "tiny", "--epochs", "1",
                 "--checkpoint-dir", str(full_disk / "ck"), "--no-register", "--quiet"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2, line
    assert line.startswith("audio-wgan train: error: No space left on device"), line
    assert list_checkpoints(full_disk / "ck") == []
    assert not list((full_disk / "ck").glob(f"{TMP_PREFIX}*"))
