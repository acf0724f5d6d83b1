"""The fast per-file kernels of precompute give the rows the plain library calls give.

Each kernel is checked against the reference it replaces (numpy's channel mean,
libsndfile's float read, torchaudio's resampling and MelSpectrogram), bitwise where the
arithmetic is the same and within float rounding where only the order of a sum moved.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from hypothesis import given, settings
from hypothesis import strategies as st

from clips.features import Resampler, decode, downmix, read_bytes, segment
from gan.spectral import DB_FLOOR, LogMel, MelConfig, filter_bands


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(channels=st.integers(1, 12), frames=st.integers(1, 3000),
       scale=st.floats(1e-6, 1e3), fortran=st.booleans(), seed=st.integers(0, 2**16))
def test_downmix_is_numpys_channel_mean_bitwise(channels: int, frames: int, scale: float,
                                                fortran: bool, seed: int) -> None:
    x = (np.random.default_rng(seed).standard_normal((frames, channels)) * scale
         ).astype(np.float32)
    if fortran:
        x = np.asfortranarray(x)
    got, want = downmix(x), x.mean(axis=1, dtype=np.float32)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (frames,)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "AIFF", "W64"])
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_decode_gives_libsndfiles_float_samples_bitwise(fmt: str, subtype: str) -> None:
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"{fmt} has no {subtype}")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5000, 2)) * 0.4).clip(-1, 1).astype(np.float32)
    x[:4] = [[-1.0, 1.0], [0.0, -0.0], [1 / 32768, -1 / 32768], [0.99997, -0.99997]]
    buf = io.BytesIO()
    sf.write(buf, x, 22050, subtype=subtype, format=fmt)
    data = buf.getvalue()
    got, sr = decode(data)
    want, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert sr == 22050 and got.dtype == np.float32 and np.array_equal(got, want)


@pytest.mark.parametrize("orig", [8000, 11025, 16000, 24000, 32000, 44100, 48000, 88200,
                                  96000, 176400])
def test_resampler_matches_torchaudio(orig: int) -> None:
    resampler, ref = Resampler(22050), torchaudio.transforms.Resample(orig, 22050)
    g = torch.Generator().manual_seed(orig)
    for n in (2, 7, 1001, orig + 13):
        x = torch.randn(n, generator=g) * 0.5
        got, want = resampler(x, orig), ref(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_resampler_keeps_torchaudios_kernel_for_many_phases() -> None:
    """48 kHz -> 22.05 kHz has 147 output phases: torchaudio's own convolution, unblocked."""
    resampler = Resampler(22050)
    x = torch.randn(48000, generator=torch.Generator().manual_seed(5))
    assert torch.equal(resampler(x, 48000), torchaudio.transforms.Resample(48000, 22050)(x))
    kernel, stride, _, per_block, _ = resampler._kernel_for(44100)
    assert (stride, per_block) == (32, 16) and kernel.shape[0] == 16  # 2:1, blocked
    # a header's absurd rate (22050 * 97000 Hz, 2:1 scaled up) keeps the unblocked kernel
    kernel, stride, _, per_block, _ = resampler._kernel_for(22050 * 97000)
    assert (stride, per_block) == (97000, 1) and kernel.numel() < 4_000_000


@pytest.mark.parametrize("cfg", [MelConfig(), MelConfig(n_mels=80, f_min=300.0, f_max=8000.0),
                                 MelConfig(sample_rate=8000, n_fft=256, hop_length=128,
                                           n_mels=32, frames=32)])
def test_logmel_bands_hold_every_weight_and_match_torchaudio(cfg: MelConfig) -> None:
    lm = LogMel(cfg)
    covered = torch.zeros_like(lm.fb_t, dtype=torch.bool)
    for a, b, lo, hi in filter_bands(lm.fb_t):
        covered[a:b, lo:hi] = True
    assert not (lm.fb_t != 0)[~covered].any()
    assert covered.sum() < 0.5 * covered.numel() or cfg.n_mels <= 32  # the point of it
    g = torch.Generator().manual_seed(1)
    for n in (cfg.n_fft // 2 + 1, cfg.n_fft, 3 * cfg.hop_length + 5, cfg.segment_samples):
        wave = torch.randn(2, n, generator=g) * 0.1
        want = 10.0 * torch.log10(lm.mel(wave).clamp_min(DB_FLOOR))
        torch.testing.assert_close(lm(wave), want, rtol=0, atol=1e-3)


def test_segments_of_a_long_clip_are_views_copied_once() -> None:
    cfg = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, frames=32)
    wave = torch.randn(cfg.segment_samples * 2 + 777)
    segs, offsets = segment(wave, cfg)
    assert len(offsets) == 3 and offsets[-1] + cfg.segment_samples == wave.shape[-1]
    for k, o in enumerate(offsets):
        assert torch.equal(segs[k], wave[o:o + cfg.segment_samples])


def test_read_bytes_reads_a_file_whole_and_no_more_than_the_cap(tmp_path) -> None:
    from clips.features import ClipRejected, ReadLimits

    p = tmp_path / "a.bin"
    p.write_bytes(b"x" * 10_000)
    assert read_bytes(str(p)) == b"x" * 10_000
    with pytest.raises(ClipRejected, match="too large"):
        read_bytes(str(p), ReadLimits(max_file_bytes=9_999))


def test_read_bytes_reads_on_when_the_file_grew_since_its_size_was_taken(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that grows between fstat and read is read whole, still within the cap."""
    import os as real_os

    from clips import features
    from clips.features import ClipRejected, ReadLimits

    p = tmp_path / "growing.bin"
    p.write_bytes(bytes(range(256)) * 40)  # 10,240 bytes; fstat below says 1,000

    class Shrunk:
        def __init__(self, st: real_os.stat_result) -> None:
            self.st_size, self.st_mtime_ns = 1_000, st.st_mtime_ns

    monkeypatch.setattr(features.os, "fstat", lambda fd: Shrunk(real_os.stat(p)))
    assert read_bytes(str(p)) == p.read_bytes()
    with pytest.raises(ClipRejected, match="too large"):
        read_bytes(str(p), ReadLimits(max_file_bytes=5_000))
