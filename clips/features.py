"""One source file -> log-mel rows: read, hash, decode, check, downmix, resample, cut, mel.

Plain functions and a thread-safe `FeatureExtractor` (no Prefect here), so the precompute
task can run many files in a thread pool: soundfile (libsndfile via cffi) and torch ops
release the GIL. Every per-file problem becomes a one-line rejection reason; nothing here
raises for bad input.

Policies (recorded in the store's mel config and documented in the README):
- all-zero audio is rejected as "silent"; NaN/inf samples are rejected;
- clips shorter than one FFT window (n_fft samples at the store's rate) are rejected as
  "too short"; anything longer but shorter than one example is padded (`pad_policy`);
- longer clips are split into examples every `split_hop_frames` frames, the last one ending
  within one hop of the clip's end, on the frame grid (or exactly at it: `tail_policy`), or
  cropped to the first example (`long_clip_policy`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import time
import zlib
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch

from clips.names import AUDIO_EXTENSIONS, is_audio_name, reason_text  # noqa: F401  (re-exported)
from clips.outcome import ClipRejected, Extracted
from clips.resample import Resampler
from gan.limits import (
    DEFAULT_MAX_CLIP_SECONDS,
    DEFAULT_MAX_FILE_MB,
    MAX_CLIP_SECONDS_ENV,
    MAX_FILE_MB_ENV,
    read_limit_settings,
)
from gan.spectral import MIN_TAIL_FRACTION, LogMel, MelConfig
from storage.store_layout import mel_sums

TRANSIENT_RETRIES = 2


# Bounded reads: a file is read whole (for its hash) and decoded whole, so both are capped
# before any byte is read. Generous defaults, set in the environment (worker processes
# inherit it): gan.limits' AUDIO_WGAN_MAX_CLIP_SECONDS and AUDIO_WGAN_MAX_FILE_MB.
MAX_CHANNELS = 64
SMALL_FILE = 64 << 20  # below this a file's header is not consulted before reading it


@dataclass(frozen=True)
class ReadLimits:
    """How much of one file may be read and decoded."""

    max_seconds: float = DEFAULT_MAX_CLIP_SECONDS
    max_file_bytes: int = DEFAULT_MAX_FILE_MB << 20

    @classmethod
    def from_env(cls) -> ReadLimits:
        """The limits set in the environment (SettingError, naming the variable, for a
        value that is not a positive number: the precompute flow checks it first)."""
        return cls(*read_limit_settings())

    def file_bytes(self, path: str | bytes, size: int) -> int:
        """The size cap of this file: the absolute cap, and for a big file whose header
        reads, `max_seconds` of its rate and channels at 8 bytes a sample."""
        if size <= SMALL_FILE:
            return self.max_file_bytes
        try:
            info = sf.info(os.fsencode(path))
            by_header = int(self.max_seconds * info.samplerate * max(info.channels, 1) * 8)
        except Exception:  # noqa: BLE001 - not audio: decode() will say so
            return self.max_file_bytes
        return min(self.max_file_bytes, by_header + SMALL_FILE)


def _size(n: int) -> str:
    return f"{n} bytes = {n / 2**30:.2f} GiB" if n >= 2**30 else f"{n} bytes = {n / 2**20:.1f} MiB"


def read_bytes(path: str, limits: ReadLimits | None = None) -> bytes:
    """Whole file, at most `limits` allow (else rejected with its size); transient OS
    errors are retried, permanent ones become rejections."""
    limits = limits or ReadLimits.from_env()
    for attempt in range(TRANSIENT_RETRIES + 1):
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                cap = limits.file_bytes(path, size)
                if size > cap:
                    raise ClipRejected(f"too large ({_size(size)}; the limit is {cap} bytes, "
                                       f"see {MAX_FILE_MB_ENV})")
                # size + 1, not cap + 1: asking for a GiB allocates it (~0.4 ms a file);
                # a file that grows while read is read on, and stays bounded by the cap
                data = f.read(size + 1)
                if len(data) > size:
                    data += f.read(cap + 1 - len(data))
                if len(data) > cap:
                    raise ClipRejected(f"too large (over {cap} bytes, see {MAX_FILE_MB_ENV})")
                return data
        except FileNotFoundError:
            raise
        except PermissionError:
            raise ClipRejected("unreadable: permission denied") from None
        except IsADirectoryError:
            raise ClipRejected("not a file") from None
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.EAGAIN, errno.EIO, errno.EBUSY, errno.ETIMEDOUT
                             ) and attempt < TRANSIENT_RETRIES:
                time.sleep(0.05 * (attempt + 1))
                continue
            raise ClipRejected(f"unreadable: {reason_text(exc.strerror or exc)}") from None
    raise AssertionError("unreachable")


def content_hash(data: bytes) -> str:
    """sha256: hardware accelerated (SHA-NI) on most x86 CPUs, ~2x blake2b here."""
    return hashlib.sha256(data).hexdigest()


def decode(source: str | bytes, max_frames: int | None = None,
           limits: ReadLimits | None = None) -> tuple[np.ndarray, int]:
    """A file path (str) or the file's bytes -> (float32 (frames, channels), sample rate).

    A header declaring more than `limits` allow (seconds at its own rate, channels, decoded
    bytes) is rejected before anything is decoded.

    Paths are decoded by libsndfile directly: decoding from memory goes through Python
    read callbacks that hold the GIL, which serialises the worker threads on ogg/mp3.
    """
    if isinstance(source, bytes):
        if not source:
            raise ClipRejected("empty file (0 bytes)", by_content=True)
        target: object = io.BytesIO(source)
    else:
        target = os.fsencode(source)  # bytes path: any file name, even undecodable ones
    limits = limits or ReadLimits.from_env()
    try:
        with sf.SoundFile(target) as f:
            sr, channels = int(f.samplerate), int(f.channels)
            # checked from the header, before a sample is decoded
            too_big = _too_big(int(f.frames), sr, channels, max_frames, limits)
            x = None if too_big else _read_float32(f, -1 if max_frames is None else max_frames)
    except MemoryError:  # not the file's fault: "failed", tried again next run
        raise
    except Exception as exc:  # noqa: BLE001 - libsndfile reports bad files many ways
        msg = getattr(exc, "error_string", None) or str(exc)
        msg = msg.removeprefix("Error : ").rstrip(".")
        # libsndfile's "System error" is the OS's on opening the file, not its bytes'
        raise ClipRejected(f"not decodable audio ({reason_text(msg)})",
                           by_content="System error" not in msg) from None
    if too_big:
        raise ClipRejected(too_big)
    assert x is not None
    if sr <= 0 or channels <= 0:
        raise ClipRejected(f"bad header (sample rate {sr}, {channels} channels)",
                           by_content=True)
    if x.shape[0] == 0:
        raise ClipRejected("no audio frames", by_content=True)
    return x, sr


PCM16_SCALE = np.float32(1 / 32768)  # libsndfile's float normalisation of 16-bit PCM


def _read_float32(f: sf.SoundFile, frames: int) -> np.ndarray:
    """(frames, channels) float32 samples, as libsndfile's float read gives them.

    16-bit PCM (most clip collections) is read as int16 and scaled here: bitwise the same
    samples (libsndfile multiplies each by 1/32768 too, an exact power of two), ~3x faster
    than libsndfile's own conversion loop. libsndfile calls some codecs (GSM 6.10 in WAV)
    not seekable, and soundfile then wants a frame count: the header's, already checked
    against the limits.
    """
    if frames < 0 and not f.seekable():
        frames = max(int(f.frames), 0)
    if f.subtype == "PCM_16":
        ints = f.read(frames=frames, dtype="int16", always_2d=True)
        out = ints.astype(np.float32)
        out *= PCM16_SCALE
        return out
    return f.read(frames=frames, dtype="float32", always_2d=True)


def _too_big(frames: int, sr: int, channels: int, max_frames: int | None,
             limits: ReadLimits) -> str:
    """Why a header's declared size is over the limits, or "" when it is not."""
    n = frames if max_frames is None or frames < 0 else min(frames, max_frames)
    if channels > MAX_CHANNELS:
        return f"too many channels ({channels}; at most {MAX_CHANNELS})"
    if sr > 0 and n > limits.max_seconds * sr:
        return (f"too long ({n} frames = {n / sr:.0f} s at {sr} Hz; the limit is "
                f"{limits.max_seconds:g} s, see {MAX_CLIP_SECONDS_ENV})")
    if n * max(channels, 1) * 4 > 4 * limits.max_file_bytes:
        return (f"too large decoded ({_size(n * channels * 4)} of samples; the limit is "
                f"{4 * limits.max_file_bytes} bytes, see {MAX_FILE_MB_ENV})")
    return ""


def check_and_downmix(x: np.ndarray) -> np.ndarray:
    """(frames, channels) -> mono float32 (frames,), rejecting NaN/inf and silence."""
    if not np.isfinite(x).all():
        raise ClipRejected("non-finite samples (NaN or inf)", by_content=True)
    if not np.any(x):
        raise ClipRejected("silent (all samples are zero)", by_content=True)
    return downmix(x)


def downmix(x: np.ndarray) -> np.ndarray:
    """(frames, channels) float32 -> the channels' mean, float32 (frames,).

    Bitwise `x.mean(axis=1, dtype=np.float32)` (numpy adds up to 7 values in order, then
    divides), one channel column at a time: numpy's reduction across the short axis of a
    (frames, 2) array is ~40x slower here (2.7 ms for 4 s of 48 kHz stereo).
    """
    channels = x.shape[1]
    if channels == 1:
        return np.ascontiguousarray(x[:, 0], dtype=np.float32)
    if channels >= 8:  # numpy's pairwise summation starts at 8 values: its order then
        return np.ascontiguousarray(x.mean(axis=1, dtype=np.float32))
    acc = x[:, 0] + x[:, 1]
    for c in range(2, channels):
        acc += x[:, c]
    acc /= np.float32(channels)
    return acc


def split_offsets(t: int, cfg: MelConfig) -> list[int]:
    """Start offsets of the examples of a clip of `t` samples (see MelConfig's policies)."""
    s, h = cfg.segment_samples, cfg.hop_samples
    if t <= s or cfg.long_clip_policy == "crop":
        return [0]
    offsets = list(range(0, t - s + 1, h))
    if cfg.tail_policy in ("end", "end-grid"):
        if t - (offsets[-1] + s) >= MIN_TAIL_FRACTION * s:  # audio no example covers yet
            last = t - s
            if cfg.tail_policy == "end-grid":  # on the frame grid of the examples before
                last -= last % cfg.hop_length
            if last > offsets[-1]:
                offsets.append(last)
        return offsets
    tail = offsets[-1] + h
    if tail < t and t - tail >= s // 2:
        offsets.append(tail)
    return offsets


def noise_floor(wave: torch.Tensor, frame: int = 256) -> float:
    """RMS of the clip's quietest tenth of `frame`-sample blocks (at least 1e-5, -100 dBFS):
    the level of its background, which "noise" padding continues instead of silence."""
    t = int(wave.shape[-1])
    n = max(1, t // frame)
    blocks = wave[:n * frame].reshape(n, -1) if t >= frame else wave.reshape(1, -1)
    rms = blocks.double().square().mean(dim=1).sqrt().sort().values
    return max(float(rms[: max(1, n // 10)].mean()), 1e-5)


def pad_short(wave: torch.Tensor, s: int, policy: str) -> torch.Tensor:
    """A clip shorter than `s` samples as exactly `s` samples under `policy`.

    "noise" draws from a generator seeded by the clip's own samples, so the same clip gives
    the same row on every run, pool and machine.
    """
    t = int(wave.shape[-1])
    out = torch.zeros(s, dtype=torch.float32)
    out[:t] = wave
    if policy == "loop":
        reps = -(-s // t)
        return wave.repeat(reps)[:s].contiguous()
    if policy == "noise":
        seed = zlib.crc32(wave.numpy().tobytes())
        g = torch.Generator().manual_seed(seed)
        out[t:] = torch.randn(s - t, generator=g) * noise_floor(wave)
    return out


def segment(wave: torch.Tensor, cfg: MelConfig) -> tuple[torch.Tensor, list[int]]:
    """(T,) -> (K, segment_samples) examples and their start offsets (see MelConfig)."""
    s, t = cfg.segment_samples, int(wave.shape[-1])
    offsets = split_offsets(t, cfg)
    if t < s:
        return pad_short(wave, s, cfg.pad_policy)[None], offsets
    if offsets[-1] + s <= t:  # every example lies inside the clip: nothing to zero
        return torch.stack([wave[o:o + s] for o in offsets]).float(), offsets
    segs = torch.zeros(len(offsets), s, dtype=torch.float32)
    for i, o in enumerate(offsets):
        piece = wave[o:o + s]
        segs[i, :piece.shape[-1]] = piece
    return segs, offsets


class FeatureExtractor:
    """Thread-safe: one instance serves all worker threads of a precompute run.

    Decoding and resampling run on the CPU threads; the mel runs on `device` (a CUDA GPU
    when one is used: the worker threads queue their small kernels on it, which frees the
    CPU cores for decoding). Rows made on a GPU equal the CPU's up to float rounding.
    """

    def __init__(self, cfg: MelConfig, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.logmel = LogMel(cfg).eval().to(self.device)
        self.resampler = Resampler(cfg.sample_rate)
        self.min_samples = cfg.n_fft

    def waveform(self, source: str | bytes) -> tuple[torch.Tensor, int, int]:
        """Decoded (path or bytes), checked, mono, resampled: (wave (T,), source rate,
        channels)."""
        cfg = self.cfg
        probe_frames = None
        if cfg.long_clip_policy == "crop":
            probe_frames = _source_frames_needed(source, cfg.segment_samples, cfg.sample_rate)
        x, sr = decode(source, probe_frames)
        channels = x.shape[1]
        mono = check_and_downmix(x)
        if mono.shape[0] < 2:
            raise ClipRejected(f"too short ({mono.shape[0]} sample)", by_content=True)
        wave = self.resampler(torch.from_numpy(mono), sr)
        if wave.shape[-1] < self.min_samples:
            raise ClipRejected(f"too short ({wave.shape[-1]} samples at {cfg.sample_rate} Hz, "
                               f"need n_fft={cfg.n_fft})", by_content=True)
        # a float64 sum of float32 samples is finite exactly when every sample is (it
        # cannot overflow), and ~6x cheaper than torch.isfinite(wave).all()
        if not math.isfinite(float(wave.sum(dtype=torch.float64))):
            raise ClipRejected("non-finite samples after resampling", by_content=True)
        return wave, sr, channels

    @torch.no_grad()
    def features(self, wave: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(float16 dB mels (K, n_mels, frames), offsets (K,)).

        Rounded to float16 by torch: numpy's conversion is ~7x slower here. Examples on
        the frame grid (tail policy "end-grid", split hops) share their frames
        (`LogMel.examples`).
        """
        t = int(wave.shape[-1])
        offsets = split_offsets(t, self.cfg)
        if self.logmel.shares_frames(offsets, t):
            db = self.logmel.examples(wave.to(self.device), offsets)
            return db.half().cpu().numpy(), np.asarray(offsets, dtype=np.int64)
        segs, offsets = segment(wave, self.cfg)
        segs = segs.to(self.device)
        s = segs.shape[-1]
        zero_padded = t >= s or self.cfg.pad_policy == "zero-end"
        padded = [k for k, o in enumerate(offsets) if t - o < s] if zero_padded else []
        if not padded:
            db = self.logmel(segs)
        else:  # a zero-padded example skips the frames that only see its zeros
            full = [k for k in range(len(offsets)) if k not in padded]
            db = torch.empty(len(offsets), self.cfg.n_mels, self.cfg.frames,
                             device=self.device)
            if full:
                db[full] = self.logmel(segs[full])
            for k in padded:
                db[k] = self.logmel.zero_tail(segs[k], t - offsets[k])
        return db.half().cpu().numpy(), np.asarray(offsets, dtype=np.int64)

    def features_and_sums(self, wave: torch.Tensor
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`features` plus their `mel_sums` (float64 (K, 2, n_mels)), for the statistics."""
        mels, offsets = self.features(wave)
        sums = mel_sums(mels)
        # float64 sums of float16 values are finite exactly when every value is: finite
        # samples far beyond [-1, 1] (a float WAV of 1e30) overflow the mel
        if not np.isfinite(sums).all():
            raise ClipRejected("its log-mel is not finite (samples far outside [-1, 1]?)",
                               by_content=True)
        return mels, offsets, sums

    def extract(self, abs_path: str, path: str, class_name: str, size: int, mtime_ns: int,
                known_hash: str | None = None) -> Extracted:
        """Never raises for bad input: the outcome carries a status and, if any, a reason."""
        out = Extracted(path=path, class_name=class_name, size=size, mtime_ns=mtime_ns,
                        status="new")
        try:
            st = os.stat(abs_path)
            data = read_bytes(abs_path)
            out.size, out.mtime_ns = len(data), st.st_mtime_ns
            out.hash = content_hash(data)
            if known_hash is not None and out.hash == known_hash:
                out.status = "same"
                return out
            if not data:
                raise ClipRejected("empty file (0 bytes)", by_content=True)
            del data
            wave, out.sample_rate, out.channels = self.waveform(abs_path)
            after = os.stat(abs_path)
            if (after.st_size, after.st_mtime_ns) != (out.size, out.mtime_ns):
                raise ClipRejected("file changed while being read; run precompute again")
            out.samples = int(wave.shape[-1])
            # sums here, in the worker thread, not in the writer
            out.mels, out.offsets, out.sums = self.features_and_sums(wave)
        except FileNotFoundError:
            out.status = "vanished"
        except ClipRejected as exc:
            out.status, out.reason = "rejected", reason_text(exc)
            out.by_content = exc.by_content
        except Exception as exc:  # noqa: BLE001 - one bad file must not fail the run
            out.status = "rejected"
            out.reason = f"failed: {type(exc).__name__}: {reason_text(exc)}"
        if out.status != "new":
            out.mels = out.sums = None
        return out


def _source_frames_needed(source: str | bytes, target_samples: int, target_rate: int
                          ) -> int | None:
    """Frames of the source needed for one cropped example (plus resampler margin)."""
    try:
        info = sf.info(io.BytesIO(source) if isinstance(source, bytes) else os.fsencode(source))
    except Exception:  # noqa: BLE001 - decode() reports it properly
        return None
    return int(math.ceil(target_samples * info.samplerate / target_rate)) + 64
