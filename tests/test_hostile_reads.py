"""Bounded reads: a file's size and its declared length are checked before it is read or
decoded, so a huge file is one rejection (with its size), never gigabytes of memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clips.features import (
    MAX_CLIP_SECONDS_ENV,
    MAX_FILE_MB_ENV,
    FeatureExtractor,
    ReadLimits,
)
from gan.limits import SettingError
from gan.spectral import MelConfig

ROOT = Path(__file__).resolve().parents[1]
MEL = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, frames=32)
TWO_GB = 2 << 30


def sparse_wav(path: Path, size: int = TWO_GB) -> Path:
    """A valid one-second wav grown to `size` bytes with a hole (no disk used)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(16000, 0.1, np.float32), 16000)
    os.truncate(path, size)
    return path


def extract(path: Path) -> object:
    st = path.stat()
    return FeatureExtractor(MEL).extract(str(path), path.name, "c", st.st_size, st.st_mtime_ns)


def test_huge_sparse_file_rejected_with_its_size_in_bounded_memory(tmp_path: Path) -> None:
    big = sparse_wav(tmp_path / "big.wav")
    # in a fresh process, so that its peak RSS is this file's alone (torch's import included)
    script = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from tests.test_hostile_reads import extract\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024\n"
        "out = extract(Path(sys.argv[1]))\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024\n"
        "print(json.dumps({'status': out.status, 'reason': out.reason, 'peak_mb': peak,\n"
        "                  'base_mb': base}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (MAX_FILE_MB_ENV,
                                                               MAX_CLIP_SECONDS_ENV)}
    res = subprocess.run([sys.executable, "-c", script, str(big), str(ROOT)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["status"] == "rejected"
    assert out["reason"].startswith(f"too large ({TWO_GB} bytes = 2.00 GiB; the limit is ")
    # reading it would add > 2 GB to what the imports took (torch's alone is 0.5-1 GB, and
    # more when the test session's environment makes other modules load)
    assert out["peak_mb"] - out["base_mb"] < 256, out


def test_declared_length_over_the_limit_is_rejected_before_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "three_seconds.wav"
    sf.write(path, np.full(3 * 8000, 0.1, np.float32), 8000)
    assert extract(path).status == "new"
    monkeypatch.setenv(MAX_CLIP_SECONDS_ENV, "2")
    out = extract(path)
    assert (out.status, out.reason) == ("rejected", "too long (24000 frames = 3 s at 8000 Hz; "
                                        f"the limit is 2 s, see {MAX_CLIP_SECONDS_ENV})")


def test_file_size_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    path = tmp_path / "two_mb.wav"
    sf.write(path, np.full(8000 * 70, 0.1, np.float32), 8000, subtype="FLOAT")  # 2.2 MB
    monkeypatch.setenv(MAX_FILE_MB_ENV, "1")
    out = extract(path)
    assert out.status == "rejected" and out.reason.startswith(
        f"too large ({path.stat().st_size} bytes = 2.1 MiB; the limit is 1048576 bytes")
    assert ReadLimits.from_env().max_file_bytes == 1 << 20
    for bad in ("not a number", "-1", "nan", "0", "inf"):  # a typo never becomes the default
        monkeypatch.setenv(MAX_FILE_MB_ENV, bad)
        with pytest.raises(SettingError, match=f"^{MAX_FILE_MB_ENV}=.* is not a number > 0"):
            ReadLimits.from_env()
    monkeypatch.setenv(MAX_FILE_MB_ENV, "")  # empty: unset
    assert ReadLimits.from_env() == ReadLimits()


@pytest.mark.usefixtures("prefect_harness")
def test_precompute_reports_the_huge_file_and_keeps_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main

    data = tmp_path / "data"
    sparse_wav(data / "c" / "huge.wav")
    sf.write(data / "c" / "ok.wav", np.full(8000, 0.1, np.float32) *
             np.sin(np.arange(8000) / 5.0).astype(np.float32), 8000)
    assert main(["precompute", str(data), "--store", str(tmp_path / "s"), "--sample-rate",
                 "8000", "--n-fft", "256", "--hop-length", "64", "--n-mels", "32",
                 "--frames", "32", "--device", "cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    [rejected] = summary["rejected"]
    assert rejected["path"] == "c/huge.wav"
    assert rejected["reason"].startswith(f"too large ({TWO_GB} bytes")
    assert summary["files"] == 1 and summary["rows"] >= 1


def test_a_codec_libsndfile_calls_unseekable_is_decoded(tmp_path: Path) -> None:
    """GSM 6.10 in WAV: libsndfile reads it from its path but calls it not seekable; it was
    rejected ("frames must be specified for non-seekable files")."""
    from clips.features import decode

    path = tmp_path / "gsm.wav"
    sf.write(path, 0.3 * np.sin(np.arange(8000, dtype=np.float32) / 5), 8000,
             subtype="GSM610")
    x, sr = decode(str(path))
    assert sr == 8000 and x.shape[1] == 1 and x.shape[0] >= 8000
    assert np.isfinite(x).all() and np.abs(x).max() > 0.1


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("name", [MAX_FILE_MB_ENV, MAX_CLIP_SECONDS_ENV])
@pytest.mark.parametrize("bad", ["-1", "abc", "nan"])
def test_a_bad_limit_setting_refuses_precompute_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        name: str, bad: str) -> None:
    from hostile_checks import refused

    data = tmp_path / "data"
    (data / "c").mkdir(parents=True)
    sf.write(data / "c" / "ok.wav", np.full(8000, 0.1, np.float32), 8000)
    monkeypatch.setenv(name, bad)
    line = refused(capsys, ["precompute", str(data), "--store", str(tmp_path / "s")],
                   tmp_path)
    assert line == (f"audio-wgan precompute: error: {name}={bad!r} is not a number > 0; "
                    "fix or unset it"), line
