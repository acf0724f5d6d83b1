"""Bad input never fails a precompute run: each bad file is rejected with a one-line reason."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clips.features import FeatureExtractor
from clips.resample import Resampler
from gan.spectral import LogMel, MelConfig
from storage.mel_store import MelStore

MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "frames": 32}
CFG = MelConfig.from_dict(MEL)


def tone(n: int, sr: int, freq: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


@pytest.fixture
def messy(tmp_path: Path, write_tone: Callable[..., Path]) -> Path:
    """A data folder with one of every kind of trouble next to good clips."""
    root = tmp_path / "data"
    good = root / "good"
    write_tone("good/plain.wav", seconds=0.5, sr=16000, root=root)
    write_tone("good/UPPER.WAV", seconds=0.5, sr=16000, freq=500, root=root)
    write_tone("good/clip.mp3", seconds=0.5, sr=16000, freq=600, root=root)
    write_tone("good/hi_rate.flac", seconds=0.3, sr=192000, freq=1000, root=root)
    write_tone("good/odd_rate.wav", seconds=0.5, sr=44101, freq=700, root=root)
    write_tone("good/six_channels.wav", seconds=0.5, sr=16000, channels=6, root=root)
    write_tone("ключ/звук ü.wav", seconds=0.5, sr=16000, freq=800, root=root)  # non-ASCII
    full = (good / "plain.wav").read_bytes()
    (good / "truncated.wav").write_bytes(full[: len(full) // 2])  # decoder keeps half
    flac = (good / "hi_rate.flac").read_bytes()
    (good / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    (good / "header_only.wav").write_bytes(full[:30])
    (good / "zero.wav").write_bytes(b"")
    (good / "text.wav").write_text("this is not audio\n" * 20)
    (good / "noise.ogg").write_bytes(np.random.default_rng(0).bytes(4096))
    x = tone(8000, 16000)
    x[100] = np.nan
    sf.write(good / "nan.wav", x, 16000, subtype="FLOAT")
    x = tone(8000, 16000)
    x[7] = np.inf
    sf.write(good / "inf.wav", x, 16000, subtype="FLOAT")
    sf.write(good / "silent.wav", np.zeros(8000, np.float32), 16000)
    sf.write(good / "one_sample.wav", np.full(1, 0.5, np.float32), 16000)
    sf.write(good / "tiny.wav", tone(100, 16000), 16000)  # 50 samples at 8 kHz < n_fft
    (good / "broken_link.wav").symlink_to(tmp_path / "does-not-exist.wav")
    os.mkfifo(good / "pipe.wav")  # would block a naive open(): rejected, never read
    (good / "notes.txt").write_text("not an audio extension")
    (good / ".hidden.wav").write_bytes(full)
    (root / ".hidden_class").mkdir()
    (root / ".hidden_class" / "x.wav").write_bytes(full)
    (good / ".cache").mkdir()
    (good / ".cache" / "y.wav").write_bytes(full)
    (root / "README.txt").write_text("outside any class folder")
    (root / "loose.wav").write_bytes(full)
    (root / "empty_class").mkdir()
    (root / "only_bad").mkdir()
    (root / "only_bad" / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    return root


EXPECTED_REJECTED = {
    "good/broken_link.wav": "unreadable",
    "good/header_only.wav": "not decodable audio",
    "good/inf.wav": "non-finite samples",
    "good/nan.wav": "non-finite samples",
    "good/noise.ogg": "not decodable audio",
    "good/one_sample.wav": "too short",
    "good/pipe.wav": "not a regular file",
    "good/silent.wav": "silent",
    "good/text.wav": "not decodable audio",
    "good/tiny.wav": "too short",
    "good/truncated.flac": "not decodable audio",
    "good/zero.wav": "empty file",
    "only_bad/bad.wav": "not decodable audio",
}
EXPECTED_KEPT = {"good/plain.wav", "good/UPPER.WAV", "good/clip.mp3", "good/hi_rate.flac",
                 "good/odd_rate.wav", "good/six_channels.wav", "good/truncated.wav",
                 "ключ/звук ü.wav"}


@pytest.mark.usefixtures("prefect_harness")
def test_messy_folder_run_succeeds_and_reports_everything(
        messy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main

    store = tmp_path / "s"
    assert main(["precompute", str(messy), "--store", str(store), "--sample-rate", "8000",
                 "--n-fft", "256", "--hop-length", "64", "--n-mels", "32", "--frames", "32",
                 "--workers", "2", "--batch-size", "4", "--device", "cpu", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["device"] == "cpu"
    rejected = {r["path"]: r["reason"] for r in s["rejected"]}
    assert set(rejected) == set(EXPECTED_REJECTED)
    for path, start in EXPECTED_REJECTED.items():
        assert rejected[path].startswith(start), (path, rejected[path])
        assert "\n" not in rejected[path] and "0x" not in rejected[path]
    st = MelStore.open(store)
    assert {f.path for f in st.files()} == EXPECTED_KEPT
    assert st.classes == ["good", "ключ"]  # no class for empty or all-bad folders
    assert sorted(s["empty_classes"]) == ["empty_class", "only_bad"]
    ignored = {r["path"]: r["reason"] for r in s["ignored"]}
    assert ignored == {"README.txt": "outside any class folder",
                       "loose.wav": "outside any class folder",
                       "good/notes.txt": "not an audio file extension"}
    assert not any("hidden" in p or ".cache" in p for p in [*rejected, *ignored])
    by_path = {f.path: f for f in st.files()}
    assert by_path["good/six_channels.wav"].channels == 6
    assert by_path["good/hi_rate.flac"].sample_rate == 192000
    assert by_path["good/odd_rate.wav"].sample_rate == 44101
    mels = st.load()[0].astype(np.float32)
    assert np.isfinite(mels).all()
    # store-info shows the same rejections, one line each, and copes with non-ASCII names
    assert main(["store-info", str(store)]) == 0
    text = capsys.readouterr().out
    assert "ключ" in text and "good/pipe.wav: not a regular file" in text
    assert main(["store-info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {r["path"] for r in info["rejected"]} == set(EXPECTED_REJECTED)
    for key in ("rows", "classes", "files", "rejected", "mel", "bytes", "fingerprint"):
        assert key in info
    assert info["classes"]["ключ"] == 2 and info["files"] == len(EXPECTED_KEPT)
    assert main(["precompute", str(messy), "--store", str(tmp_path / "x"), "--device",
                 "gpu0"]) == 2  # refused in one line before anything is written
    err = capsys.readouterr().err.strip()
    assert err.endswith("error: unknown device 'gpu0' (use auto, cpu, cuda or cuda:N)")
    assert "\n" not in err and not (tmp_path / "x").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
@pytest.mark.usefixtures("prefect_harness")
def test_unreadable_file_rejected(tmp_path: Path, write_tone: Callable[..., Path]) -> None:
    from flows.precompute import precompute

    write_tone("c/ok.wav", seconds=0.5, root=tmp_path / "d")
    locked = write_tone("c/locked.wav", seconds=0.5, root=tmp_path / "d")
    locked.chmod(0)
    s = precompute(str(tmp_path / "d"), str(tmp_path / "s"), mel=MEL)
    assert s["rejected"] == [{"path": "c/locked.wav", "reason": "unreadable: permission denied"}]


def extract(path: Path) -> object:
    st = path.stat()
    return FeatureExtractor(CFG).extract(str(path), path.name, "c", st.st_size, st.st_mtime_ns)


def test_multichannel_is_downmixed_to_the_mean(tmp_path: Path) -> None:
    left, right = tone(4000, 8000, 300), tone(4000, 8000, 1200) * 0.25
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), 8000, subtype="FLOAT")
    sf.write(tmp_path / "mono.wav", (left + right) / 2, 8000, subtype="FLOAT")
    a, b = extract(tmp_path / "st.wav"), extract(tmp_path / "mono.wav")
    assert a.status == b.status == "new" and a.channels == 2
    np.testing.assert_array_equal(a.mels, b.mels)


def test_mels_match_logmel_of_resampled_audio(tmp_path: Path) -> None:
    x = tone(1984 * 2, 16000, 440)  # 0.248 s at 16 kHz: one example after resampling
    sf.write(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    out = extract(tmp_path / "a.wav")
    import torchaudio

    ref = LogMel(CFG)(torchaudio.functional.resample(torch.from_numpy(x), 16000, 8000)[None])
    np.testing.assert_allclose(out.mels[0].astype(np.float32), ref[0].numpy(), atol=0.1)
    assert out.offsets.tolist() == [0] and out.samples == 1984


def test_odd_rate_pairs_resample_without_huge_kernels() -> None:
    r = Resampler(22050)
    x = torch.from_numpy(tone(44101, 44101, 1000))
    y = r(x, 44101)
    assert r.plan(44101) is None  # FFT path: a sinc kernel would need ~4 GB
    assert abs(y.shape[-1] - 22050) <= 1
    spec = torch.fft.rfft(y).abs()
    assert abs(int(spec.argmax()) - 1000) <= 2  # still a 1 kHz tone
