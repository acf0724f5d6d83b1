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

from clips.features import decode, downmix, read_bytes, segment
from clips.resample import GROUP_SPAN, Resampler
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


def test_resampler_plans_blocks_and_phase_groups() -> None:
    """2:1 (44.1 kHz) takes 16 ratio steps a row; 48 kHz's 147 phases are cut into groups
    that each read only the columns of their nonzero taps, and every nonzero tap of
    torchaudio's kernel is in exactly one group."""
    resampler = Resampler(22050)
    plan = resampler.plan(44100)
    assert (plan.stride, plan.outputs, len(plan.groups)) == (32, 16, 1)
    plan = resampler.plan(48000)
    assert (plan.stride, plan.outputs) == (320, 147) and 2 <= len(plan.groups) <= 8
    kernel = torchaudio.transforms.Resample(48000, 22050).kernel[:, 0]
    rebuilt = torch.zeros_like(kernel)
    widest = max(int((row != 0).nonzero().max() - (row != 0).nonzero().min()) + 1
                 for row in kernel)
    for g in plan.groups:
        cols, phases = g.weights.shape
        assert cols <= GROUP_SPAN * widest
        assert not rebuilt[g.first:g.first + phases, g.lo:g.lo + cols].any()
        rebuilt[g.first:g.first + phases, g.lo:g.lo + cols] = g.weights.T
    assert torch.equal(rebuilt, kernel)
    assert sum(g.weights.numel() for g in plan.groups) < 0.5 * kernel.numel()
    # a header's absurd rate (22050 * 97000 Hz, 2:1 scaled up) keeps the unblocked kernel
    plan = resampler.plan(22050 * 97000)
    assert (plan.stride, plan.outputs) == (97000, 1)
    assert sum(g.weights.numel() for g in plan.groups) < 4_000_000
    assert resampler.plan(44101) is None  # 44101:22050 would need a huge kernel: FFT


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


@pytest.mark.parametrize("tail", ["end", "end-grid"])
def test_segments_of_a_long_clip_are_views_copied_once(tail: str) -> None:
    cfg = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, frames=32,
                    tail_policy=tail)
    wave = torch.randn(cfg.segment_samples * 2 + 777)
    segs, offsets = segment(wave, cfg)
    t, s, hop = wave.shape[-1], cfg.segment_samples, cfg.hop_length
    assert len(offsets) == 3 and offsets[:2] == [0, cfg.hop_samples]
    if tail == "end":  # the last example ends at the clip's end
        assert offsets[-1] + s == t
    else:  # on the frame grid, within one hop of the end
        assert offsets[-1] % hop == 0 and t - hop < offsets[-1] + s <= t
    for k, o in enumerate(offsets):
        assert torch.equal(segs[k], wave[o:o + cfg.segment_samples])


CONFIGS = [MelConfig(), MelConfig(n_fft=1024, hop_length=300, n_mels=64, frames=64),
           MelConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=64, frames=40),
           MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, frames=32),
           MelConfig(sample_rate=8000, n_fft=256, hop_length=200, n_mels=32, frames=8)]


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(c=st.integers(0, len(CONFIGS) - 1), extra=st.floats(0.0, 3.0),
       hop_frames=st.sampled_from([None, 1, 7, 64, 300]), seed=st.integers(0, 2**16))
def test_examples_on_the_frame_grid_share_frames_and_equal_forward(
        c: int, extra: float, hop_frames: int | None, seed: int) -> None:
    """LogMel.examples (one STFT over the clip's shared frames and each example's padded
    ends) gives what LogMel of each example alone gives, for any split of a clip on the
    frame grid; it is used only where it computes fewer frames."""
    base = CONFIGS[c]
    cfg = MelConfig(**{**base.to_dict(), "split_hop_frames": hop_frames})
    lm = LogMel(cfg)
    s, hop = cfg.segment_samples, cfg.hop_length
    t = s + int(extra * s) + seed % hop
    wave = torch.randn(t, generator=torch.Generator().manual_seed(seed)) * 0.3
    _, offsets = segment(wave, cfg)
    if not lm.shares_frames(offsets, t):
        assert len(offsets) < 2 or (hop_frames or cfg.frames) >= cfg.frames - 8
        return
    got = lm.examples(wave, offsets)
    want = lm(torch.stack([wave[o:o + s] for o in offsets]))
    assert got.shape == want.shape == (len(offsets), cfg.n_mels, cfg.frames)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3)


def test_examples_off_the_grid_or_outside_the_clip_are_not_shared() -> None:
    cfg = MelConfig()
    lm, s = LogMel(cfg), cfg.segment_samples
    t = 88200
    assert lm.shares_frames([0, 22784], t)  # a 4 s clip under "end-grid"
    assert not lm.shares_frames([0, t - s], t)  # "end": 22920 is off the grid
    assert not lm.shares_frames([0, 23040], t)  # past the clip's end
    assert not lm.shares_frames([0], t) and not lm.shares_frames([256, 0], t)
    assert not lm.shares_frames([0, 65536], 2 * 65536)  # no overlap: nothing to share


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
