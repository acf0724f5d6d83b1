"""One source file -> log-mel rows: read, hash, decode, check, downmix, resample, cut, mel.

Plain functions and a thread-safe `FeatureExtractor` (no Prefect here), so the precompute
task can run many files in a thread pool: soundfile (libsndfile via cffi) and torch ops
release the GIL. Every per-file problem becomes a one-line rejection reason; nothing here
raises for bad input.

Policies (recorded in the store's mel config and documented in the README):
- all-zero audio is rejected as "silent"; NaN/inf samples are rejected;
- clips shorter than one FFT window (n_fft samples at the store's rate) are rejected as
  "too short"; anything longer but shorter than one example is zero-padded at the end;
- longer clips are split into examples every `split_hop_frames` frames, keeping a final
  zero-padded example when at least half of it is real audio, or cropped to the first
  example (`long_clip_policy`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import torch
import torchaudio

from gan.spectral import LogMel, MelConfig
from storage.mel_store import mel_sums

# extensions of formats libsndfile reads (matched case-insensitively)
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
    ".au", ".snd", ".caf", ".w64", ".rf64", ".voc", ".sf", ".ircam", ".nist", ".sph",
})
MAX_SINC_KERNEL = 4_000_000  # elements; beyond this (odd rate pairs) resample via FFT
TRANSIENT_RETRIES = 2


def is_audio_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in AUDIO_EXTENSIONS


class ClipRejected(Exception):
    """A file that cannot become training rows; str(exc) is the one-line reason."""


@dataclass
class Extracted:
    """Outcome for one file: status "new" (rows computed), "same" (hash unchanged),
    "rejected" (reason) or "vanished" (deleted since the scan)."""

    path: str
    class_name: str
    size: int
    mtime_ns: int
    status: str
    hash: str = ""
    reason: str = ""
    mels: np.ndarray | None = None  # float16 (K, n_mels, frames)
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sums: np.ndarray | None = None  # float64 (K, 2, n_mels), see storage.mel_store.mel_sums
    sample_rate: int = 0
    channels: int = 0
    samples: int = 0


def read_bytes(path: str) -> bytes:
    """Whole file; transient OS errors are retried, permanent ones become rejections."""
    for attempt in range(TRANSIENT_RETRIES + 1):
        try:
            with open(path, "rb") as f:
                return f.read()
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
            raise ClipRejected(f"unreadable: {one_line(exc.strerror or exc)}") from None
    raise AssertionError("unreachable")


def content_hash(data: bytes) -> str:
    """sha256: hardware accelerated (SHA-NI) on most x86 CPUs, ~2x blake2b here."""
    return hashlib.sha256(data).hexdigest()


def decode(source: str | bytes, max_frames: int | None = None) -> tuple[np.ndarray, int]:
    """A file path (str) or the file's bytes -> (float32 (frames, channels), sample rate).

    Paths are decoded by libsndfile directly: decoding from memory goes through Python
    read callbacks that hold the GIL, which serialises the worker threads on ogg/mp3.
    """
    if isinstance(source, bytes):
        if not source:
            raise ClipRejected("empty file (0 bytes)")
        target: object = io.BytesIO(source)
    else:
        target = os.fsencode(source)  # bytes path: any file name, even undecodable ones
    try:
        with sf.SoundFile(target) as f:
            sr, channels = int(f.samplerate), int(f.channels)
            x = f.read(frames=-1 if max_frames is None else max_frames, dtype="float32",
                       always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile reports bad files many ways
        msg = getattr(exc, "error_string", None) or str(exc)
        msg = msg.removeprefix("Error : ").rstrip(".")
        raise ClipRejected(f"not decodable audio ({one_line(msg)})") from None
    if sr <= 0 or channels <= 0:
        raise ClipRejected(f"bad header (sample rate {sr}, {channels} channels)")
    if x.shape[0] == 0:
        raise ClipRejected("no audio frames")
    return x, sr


def check_and_downmix(x: np.ndarray) -> np.ndarray:
    """(frames, channels) -> mono float32 (frames,), rejecting NaN/inf and silence."""
    if not np.isfinite(x).all():
        raise ClipRejected("non-finite samples (NaN or inf)")
    mono = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if not np.any(x):
        raise ClipRejected("silent (all samples are zero)")
    return np.ascontiguousarray(mono, dtype=np.float32)


class Resampler:
    """torchaudio's windowed-sinc resampling with the kernel cached per source rate.

    `torchaudio.functional.resample` rebuilds its kernel on every call, which dominates
    for short clips; `torchaudio.transforms.Resample` is the same algorithm with the
    kernel kept. Rate pairs whose reduced ratio would need a huge kernel (e.g. 44101 Hz)
    fall back to band-limited FFT resampling.
    """

    def __init__(self, target: int) -> None:
        self.target = int(target)
        self._cache: dict[int, torchaudio.transforms.Resample | None] = {}
        self._lock = threading.Lock()

    def _kernel_for(self, orig: int) -> torchaudio.transforms.Resample | None:
        with self._lock:
            if orig not in self._cache:
                g = math.gcd(orig, self.target)
                o, n = orig // g, self.target // g
                width = math.ceil(6 * o / (min(o, n) * 0.99))
                small = n * (2 * width + o) <= MAX_SINC_KERNEL
                self._cache[orig] = (torchaudio.transforms.Resample(orig, self.target)
                                     if small else None)
            return self._cache[orig]

    def __call__(self, wave: torch.Tensor, orig: int) -> torch.Tensor:
        if orig == self.target:
            return wave
        kernel = self._kernel_for(orig)
        if kernel is not None:
            return kernel(wave)
        n_out = max(1, math.ceil(wave.shape[-1] * self.target / orig))
        spec = torch.fft.rfft(wave.double())
        keep = min(spec.shape[-1], n_out // 2 + 1)
        out = torch.fft.irfft(spec[..., :keep], n=n_out) * (n_out / wave.shape[-1])
        return out.float()


def segment(wave: torch.Tensor, cfg: MelConfig) -> tuple[torch.Tensor, list[int]]:
    """(T,) -> (K, segment_samples) examples and their start offsets (see module doc)."""
    s, h, t = cfg.segment_samples, cfg.hop_samples, int(wave.shape[-1])
    if t <= s or cfg.long_clip_policy == "crop":
        offsets = [0]
    else:
        offsets = list(range(0, t - s + 1, h))
        tail = offsets[-1] + h
        if tail < t and t - tail >= s // 2:
            offsets.append(tail)
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
            raise ClipRejected(f"too short ({mono.shape[0]} sample)")
        wave = self.resampler(torch.from_numpy(mono), sr)
        if wave.shape[-1] < self.min_samples:
            raise ClipRejected(f"too short ({wave.shape[-1]} samples at {cfg.sample_rate} Hz, "
                               f"need n_fft={cfg.n_fft})")
        if not torch.isfinite(wave).all():
            raise ClipRejected("non-finite samples after resampling")
        return wave, sr, channels

    @torch.no_grad()
    def features(self, wave: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(float16 dB mels (K, n_mels, frames), offsets (K,)).

        Rounded to float16 by torch: numpy's conversion is ~7x slower here.
        """
        segs, offsets = segment(wave, self.cfg)
        segs = segs.to(self.device)
        s, t = segs.shape[-1], int(wave.shape[-1])
        padded = [k for k, o in enumerate(offsets) if t - o < s]
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
        return mels, offsets, mel_sums(mels)

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
                raise ClipRejected("empty file (0 bytes)")
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
            out.status, out.reason = "rejected", one_line(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must not fail the run
            out.status = "rejected"
            out.reason = f"failed: {type(exc).__name__}: {one_line(exc)}"
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


def one_line(x: object, limit: int = 200) -> str:
    text = " ".join(str(x).split()) or type(x).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
