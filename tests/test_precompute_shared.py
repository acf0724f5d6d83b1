"""Precompute on real recordings (ESC-10 ogg at 44.1 kHz, FSDD wav at 8 kHz), via the CLI.

A temp folder of symlinks to a few files per class keeps this quick; the full-size runs
are in bench/bench_precompute.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from gan.spectral import LogMel, MelConfig
from storage.mel_store import MelStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


def subset(src: Path, dst: Path, classes: int, per_class: int) -> list[Path]:
    picked = []
    for cls in sorted(p for p in src.iterdir() if p.is_dir())[:classes]:
        (dst / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:per_class]:
            (dst / cls.name / f.name).symlink_to(f)
            picked.append(f)
    return picked


def test_esc10_subset_default_config(shared_data: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main

    data = tmp_path / "esc10"
    picked = subset(shared_data / "esc10", data, classes=3, per_class=3)
    store = tmp_path / "esc.zarr"
    assert main(["precompute", str(data), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    # 5 s clips: 2 examples of 2.96 s, the second ending within one hop of the clip's end
    assert "precompute: 18 rows from 9 files" in out
    assert main(["store-info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 18 and info["files"] == 9 and info["rejected"] == []
    assert info["classes"] == {p.name: 6 for p in sorted(data.iterdir())}
    assert info["mel"] == MelConfig().to_dict() and info["bytes"] > 0
    st = MelStore.open(store)
    # the first example of the first file equals a direct decode -> resample -> LogMel
    x, sr = sf.read(picked[0], dtype="float32", always_2d=True)
    wave = torchaudio.functional.resample(torch.from_numpy(x.mean(axis=1)), sr, 22050)
    seg, hop = MelConfig().segment_samples, MelConfig().hop_length
    tail = wave.shape[-1] - seg
    tail -= tail % hop  # "end-grid": on the frame grid of the first example
    assert st.offsets()[:2].tolist() == [0, tail]
    # both examples (which share their STFT frames) equal LogMel of each example alone
    for row, o in ((0, 0), (1, tail)):
        ref = LogMel(MelConfig())(wave[o:o + seg][None])[0].numpy()
        np.testing.assert_allclose(st.read_rows([row])[0].astype(np.float32), ref, atol=0.1)
    # unchanged re-run: nothing to do
    assert main(["precompute", str(data), "--store", str(store)]) == 0
    assert "store unchanged" in capsys.readouterr().out


def test_fsdd_subset_small_config(shared_data: Path, tmp_path: Path) -> None:
    from flows.precompute import precompute

    data = tmp_path / "fsdd"
    subset(shared_data / "fsdd", data, classes=4, per_class=6)
    mel = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 64, "frames": 64}
    s = precompute(str(data), str(tmp_path / "fsdd.zarr"), mel=mel)
    assert s["files"] == 24 and s["rejected"] == []
    assert set(s["classes"]) == {"0", "1", "2", "3"}
    st = MelStore.open(tmp_path / "fsdd.zarr")
    assert st.mel_config.sample_rate == 8000 and len(st) == s["rows"] >= 24
    mean, std = st.stats()
    assert mean.shape == (64,) and np.all(std > 0)
    batches = list(st.iter_batches(8, seed=1))
    assert len(batches) == len(st) // 8
