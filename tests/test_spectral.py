"""gan.spectral.LogMel: its fast path equals torchaudio's MelSpectrogram + 10 log10."""

from __future__ import annotations

import pytest
import torch
import torchaudio

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
