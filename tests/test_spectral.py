"""gan.spectral.LogMel: its fast path equals torchaudio's MelSpectrogram + 10 log10."""

from __future__ import annotations

import pytest
import torch
import torchaudio
from mel_checks import assert_same_power

from gan.spectral import DB_FLOOR, LogMel, MelConfig


@pytest.mark.parametrize("cfg", [MelConfig(), MelConfig(sample_rate=8000, n_fft=256,
                                                       hop_length=64, n_mels=32, frames=32,
                                                       f_min=50.0, f_max=3500.0)])
def test_logmel_matches_torchaudio(cfg: MelConfig) -> None:
    ref = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        n_mels=cfg.n_mels, f_min=cfg.f_min, f_max=cfg.f_max, power=2.0, center=True,
        norm="slaney", mel_scale="slaney")
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(3, cfg.segment_samples, generator=g) * 0.1
    wave[1, cfg.segment_samples // 3:] = 0.0  # padded tail: floor values
    want = 10.0 * torch.log10(ref(wave).clamp_min(DB_FLOOR))
    got = LogMel(cfg)(wave)
    assert got.shape == (3, cfg.n_mels, cfg.frames)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3)
    # any leading shape, and a single clip
    torch.testing.assert_close(LogMel(cfg)(wave[None]), want[None], rtol=0, atol=1e-3)
    torch.testing.assert_close(LogMel(cfg)(wave[0]), want[0], rtol=0, atol=1e-3)
    assert LogMel(cfg).state_dict().keys() == {"mel.spectrogram.window", "mel.mel_scale.fb"}


@pytest.mark.parametrize("cfg", [MelConfig(), MelConfig(sample_rate=8000, n_fft=256,
                                                       hop_length=64, n_mels=32, frames=32)])
def test_zero_tail_skips_only_frames_that_see_zeros(cfg: MelConfig) -> None:
    lm = LogMel(cfg)
    s, half = cfg.segment_samples, cfg.n_fft // 2
    g = torch.Generator().manual_seed(1)
    for real in (cfg.n_fft, half + 3, s // 3, s - half - 1, s - half, s - 1, s):
        wave = torch.zeros(s)
        wave[:real] = torch.randn(real, generator=g) * 0.1
        got, want = lm.zero_tail(wave, real), lm(wave[None])[0]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
        assert torch.equal(got.half(), want.half())  # what the store keeps


def test_feature_extractor_rows_equal_logmel_of_each_example() -> None:
    from clips.features import FeatureExtractor, segment

    cfg = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, frames=32)
    ex = FeatureExtractor(cfg)
    g = torch.Generator().manual_seed(2)
    for n in (300, 1984, 1984 * 2 + 1500, 1984 * 3):  # padded, exact, split + tail, split
        wave = torch.randn(n, generator=g) * 0.1
        mels, offsets = ex.features(wave)
        segs, offs = segment(wave, cfg)
        assert list(offsets) == offs
        want = LogMel(cfg)(segs).half().numpy()
        assert mels.dtype == want.dtype and (mels == want).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_feature_extractor_on_the_gpu_matches_the_cpu() -> None:
    from clips.features import FeatureExtractor

    cfg = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, frames=32)
    cpu, gpu = FeatureExtractor(cfg), FeatureExtractor(cfg, "cuda")
    g = torch.Generator().manual_seed(3)
    for n in (300, 1984, 1984 * 2 + 1500):
        wave = torch.randn(n, generator=g) * 0.1
        (a, oa), (b, ob) = cpu.features(wave), gpu.features(wave)
        assert b.dtype == a.dtype and list(oa) == list(ob)
        assert_same_power(a, b)

