"""The precompute flow on small generated audio: rows, policies, incremental runs, refusals."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from mel_checks import assert_same_power

from flows.precompute import precompute
from storage.mel_store import MelStore, StoreError
from storage.store_lock import StoreBusyError, StoreLock
from tasks.precompute import DataDirError, NoUsableClipsError

# 8 kHz, 32 mels x 32 frames: an example is 31 * 64 = 1984 samples (0.248 s)
MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "frames": 32}

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def data(tmp_path: Path, write_tone: Callable[..., Path]) -> Path:
    root = tmp_path / "data"
    for i in range(3):  # 0.5 s -> 4000 samples at 8 kHz: one example + one ending at the end
        write_tone(f"alpha/a{i}.wav", seconds=0.5, sr=16000, freq=300 + 100 * i, root=root)
    for i in range(2):  # 0.1 s: padded to one example
        write_tone(f"beta/b{i}.flac", seconds=0.1, sr=22050, freq=900 + 50 * i, root=root)
    # 1 s stereo 44.1 kHz in a subfolder: split into 4 examples (3 + one ending at the end)
    write_tone("gamma/sub/g.ogg", seconds=1.0, sr=44100, freq=1500, channels=2, root=root)
    return root


def run(data: Path, store: Path, **kw: object) -> dict:
    return precompute(str(data), str(store), mel=kw.pop("mel", MEL), batch_size=kw.pop(
        "batch_size", 2), workers=kw.pop("workers", 2), device=kw.pop("device", "auto"),
        pool=kw.pop("pool", "threads"), compact=kw.pop("compact", None))


def test_flow_builds_store_with_policies(data: Path, tmp_path: Path) -> None:
    s = run(data, tmp_path / "s")
    assert s["rows"] == 3 * 2 + 2 * 1 + 4 and s["files"] == 6 and s["added_files"] == 6
    assert s["classes"] == {"alpha": 6, "beta": 2, "gamma": 4}
    assert s["changed"] and s["rejected"] == [] and s["processed_files"] == 6
    for key in ("replaced_files", "removed_files", "fingerprint", "seconds", "clips_per_s"):
        assert key in s
    st = MelStore.open(tmp_path / "s")
    assert len(st) == s["rows"] and st.fingerprint == s["fingerprint"]
    assert st.classes == ["alpha", "beta", "gamma"]
    srcs = st.row_sources()
    assert srcs.count("gamma/sub/g.ogg") == 4 and srcs.count("beta/b0.flac") == 1
    offs = st.offsets()
    g = [o for o, p in zip(offs, srcs, strict=True) if p == "gamma/sub/g.ogg"]
    assert g == [0, 2048, 4096, 8000 - 1984]  # samples at 8 kHz; the last ends at the end
    mels, labels = st.load()
    assert mels.shape == (12, 32, 32) and np.isfinite(mels.astype(np.float32)).all()
    # no example holds digital silence: the short clip is padded with its own noise floor
    assert mels.astype(np.float32).max(axis=1).min() > -60.0
    assert st.mel_config.pad_policy == "noise" and st.mel_config.tail_policy == "end-grid"


def test_legacy_policies_pad_with_zeros(data: Path, tmp_path: Path) -> None:
    s = run(data, tmp_path / "s", mel={**MEL, "pad_policy": "zero-end", "tail_policy": "pad"})
    st = MelStore.open(tmp_path / "s")
    assert s["rows"] == 12
    srcs = st.row_sources()
    g = [o for o, p in zip(st.offsets(), srcs, strict=True) if p == "gamma/sub/g.ogg"]
    assert g == [0, 2048, 4096, 6144]  # the zero-padded tail starts one hop later
    b0 = st.read_rows([srcs.index("beta/b0.flac")])[0]
    assert b0[:, -5:].max() <= -99.0 and b0[:, :5].max() > -60.0  # the dB floor after it ends
    info = st.info()
    assert info["rows"] == 12 and info["files"] == 6 and info["mel"]["n_mels"] == 32


def test_crop_policy_keeps_one_example_per_file(data: Path, tmp_path: Path) -> None:
    s = run(data, tmp_path / "s", mel={**MEL, "long_clip_policy": "crop"})
    assert s["rows"] == 6 and s["classes"] == {"alpha": 3, "beta": 2, "gamma": 1}
    assert MelStore.open(tmp_path / "s").mel_config.long_clip_policy == "crop"


def test_incremental_runs(data: Path, tmp_path: Path,
                          write_tone: Callable[..., Path]) -> None:
    store = tmp_path / "s"
    first = run(data, store)
    labels_before = dict(zip(MelStore.open(store).row_sources(),
                             MelStore.open(store).labels().tolist(), strict=True))

    again = run(data, store)  # unchanged folder: nothing read, nothing written
    assert again["processed_files"] == 0 and again["new_rows"] == 0
    assert not again["changed"] and again["fingerprint"] == first["fingerprint"]
    assert again["unchanged_files"] == 6 and again["added_files"] == 0

    a0 = data / "alpha" / "a0.wav"
    os.utime(a0, ns=(1, 1_000_000_000))  # touched: re-hashed, same content, no new rows
    touched = run(data, store)
    assert touched["processed_files"] == 1 and touched["new_rows"] == 0
    assert not touched["changed"]
    assert run(data, store)["processed_files"] == 0  # the new stat was remembered

    write_tone("alpha/a0.wav", seconds=0.2, sr=16000, freq=777, root=data)  # new content
    (data / "beta" / "b1.flac").unlink()
    write_tone("alpha/a9.wav", seconds=0.3, sr=16000, freq=555, root=data)
    write_tone("0new/n.wav", seconds=0.3, sr=8000, freq=222, root=data)  # sorts first
    s = run(data, store)
    assert (s["replaced_files"], s["removed_files"], s["added_files"]) == (1, 1, 2)
    assert s["changed"] and s["fingerprint"] != first["fingerprint"]
    st = MelStore.open(store)
    assert st.classes == ["alpha", "beta", "gamma", "0new"]  # old labels not renumbered
    assert s["classes"] == {"alpha": 2 * 2 + 1 + 1, "beta": 1, "gamma": 4, "0new": 1}
    assert "beta/b1.flac" not in st.row_sources()
    for src, lab in zip(st.row_sources(), st.labels().tolist(), strict=True):
        if src in labels_before:
            assert labels_before[src] == lab
    assert st.info()["dead_rows"] == 2 + 1  # a0's two old rows + b1's row
    # the incremental store serves exactly what a fresh build of the same folder serves,
    # up to class numbering (new classes are appended, not sorted in)
    fresh = run(data, tmp_path / "fresh")
    fr = MelStore.open(tmp_path / "fresh")
    assert fr.row_sources() == st.row_sources()
    np.testing.assert_array_equal(fr.load()[0], st.load()[0])
    assert fresh["rows"] == s["rows"]
    np.testing.assert_allclose(fr.stats()[0], st.stats()[0], rtol=1e-6)
    # compaction drops the 3 dead rows; the store still serves what the fresh build does
    c = run(data, store, compact=True)
    assert c["compacted_rows"] == 3 and c["stored_rows"] == c["rows"] == s["rows"]
    assert c["processed_files"] == 0 and not c["changed"]  # same content, same fingerprint
    st = MelStore.open(store)
    assert st.info()["dead_rows"] == 0 and st.row_sources() == fr.row_sources()
    np.testing.assert_array_equal(fr.load()[0], st.load()[0])
    assert run(data, store)["compacted_rows"] == 0


def test_a_rejection_its_bytes_decided_is_not_read_again_until_the_file_changes(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "s"
    silent = data / "alpha" / "quiet.wav"
    sf.write(silent, np.zeros(4000, dtype=np.float32), 8000)
    big = data / "beta" / "big.wav"
    sf.write(big, np.full(80000, 0.1, dtype=np.float32), 8000)  # 10 s: too long below
    monkeypatch.setenv("AUDIO_WGAN_MAX_CLIP_SECONDS", "5")
    first = run(data, store)
    reasons = {r["path"]: r["reason"] for r in first["rejected"]}
    assert reasons["alpha/quiet.wav"].startswith("silent")
    assert reasons["beta/big.wav"].startswith("too long")
    assert first["processed_files"] == 8
    m = MelStore.open(store).manifest.rejected
    assert {r["path"]: set(r) for r in m} == {  # only the silent one is remembered
        "alpha/quiet.wav": {"path", "reason", "size", "mtime_ns", "decoder"},
        "beta/big.wav": {"path", "reason"}}

    again = run(data, store)  # the silent file is not read; the limit's may change: read
    assert again["processed_files"] == 1 and not again["changed"]
    assert again["rejected"] == first["rejected"]

    from tasks import precompute as precompute_tasks

    with monkeypatch.context() as m:  # another libsndfile: what it could not read, it tries
        m.setattr(precompute_tasks, "decoder_version", lambda: "9.9.9")
        assert run(data, store)["processed_files"] == 2

    monkeypatch.setenv("AUDIO_WGAN_MAX_CLIP_SECONDS", "60")  # the limit raised: accepted
    os.utime(silent, ns=(1, 2_000_000_000))  # touched: read again (still silent)
    raised = run(data, store)
    assert raised["processed_files"] == 2 and raised["added_files"] == 1
    assert [r["path"] for r in raised["rejected"]] == ["alpha/quiet.wav"]
    sf.write(silent, np.full(4000, 0.2, dtype=np.float32), 8000)  # now audible
    fixed = run(data, store)
    assert fixed["rejected"] == [] and fixed["added_files"] == 1
    assert MelStore.open(store).manifest.rejected == []


def test_only_rejections_by_the_files_own_bytes_are_remembered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rejection says whether the file's bytes decided it (then the manifest remembers
    it with size, mtime and decoder); limits, OS errors and crashes are tried again."""
    import clips.features as features
    from clips.features import FeatureExtractor
    from clips.scan import remembered_rejection
    from gan.mel_config import MelConfig

    ex = FeatureExtractor(MelConfig(**MEL))

    def outcome(name: str, write: Callable[[Path], object]) -> tuple[str, bool]:
        path = tmp_path / name
        write(path)
        st = path.stat()
        out = ex.extract(str(path), name, "c", st.st_size, st.st_mtime_ns)
        assert out.status == "rejected"
        entry = remembered_rejection(name, out.reason, out.size, out.mtime_ns, "1.2.2",
                                     out.by_content)
        assert ("mtime_ns" in entry) == out.by_content
        return out.reason, out.by_content

    def wav(samples: np.ndarray) -> Callable[[Path], object]:
        return lambda p: sf.write(p, samples, 8000)

    by_content = {
        "silent": wav(np.zeros(4000, dtype=np.float32)),
        "too short": wav(np.full(10, 0.3, dtype=np.float32)),
        "empty file": lambda p: p.write_bytes(b""),
        "not decodable audio": lambda p: p.write_bytes(b"not audio at all" * 64),
    }
    for reason, write in by_content.items():
        got, content = outcome(reason.replace(" ", "_") + ".wav", write)
        assert got.startswith(reason) and content, got
    monkeypatch.setenv("AUDIO_WGAN_MAX_CLIP_SECONDS", "0.1")  # a limit, not the bytes
    got, content = outcome("long.wav", wav(np.full(4000, 0.3, dtype=np.float32)))
    assert got.startswith("too long") and not content
    monkeypatch.delenv("AUDIO_WGAN_MAX_CLIP_SECONDS")

    def denied(*args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(features, "open", denied, raising=False)  # CI runs as root
    got, content = outcome("denied.wav", wav(np.full(4000, 0.3, dtype=np.float32)))
    assert got.startswith("unreadable: permission denied") and not content
    monkeypatch.undo()

    class SystemError_(RuntimeError):  # libsndfile's words for an OS error on opening
        error_string = "System error"

    def system_error(*args: object, **kwargs: object) -> object:
        raise SystemError_("System error")

    wav(np.full(4000, 0.3, dtype=np.float32))(tmp_path / "oserror.wav")
    monkeypatch.setattr(features.sf, "SoundFile", system_error)
    got, content = outcome("oserror.wav", lambda p: None)
    assert got == "not decodable audio (System error)" and not content


def test_mel_change_on_existing_store_refused(data: Path, tmp_path: Path) -> None:
    run(data, tmp_path / "s")
    with pytest.raises(StoreError, match=r"hop_length 64 -> 128\); use a new --store"):
        run(data, tmp_path / "s", mel={**MEL, "hop_length": 128})
    assert run(data, tmp_path / "s", mel=None)["rows"] == 12  # None: keep the store's config


def test_second_run_refused_while_store_is_locked(data: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main

    run(data, tmp_path / "s")
    with StoreLock(tmp_path / "s"):
        with pytest.raises(StoreBusyError, match="being written by another precompute"):
            run(data, tmp_path / "s")
        capsys.readouterr()
        assert main(["precompute", str(data), "--store", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "being written by another precompute" in err[0]
    assert len(MelStore.open(tmp_path / "s")) == 12


def test_missing_data_dir_and_no_usable_clip(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="does not exist"):
        run(tmp_path / "nope", tmp_path / "s")
    assert not (tmp_path / "s").exists()  # nothing created for a typo
    bad = tmp_path / "bad"
    (bad / "cls").mkdir(parents=True)
    (bad / "cls" / "x.wav").write_bytes(b"not audio at all")
    sf.write(bad / "cls" / "silent.wav", np.zeros(8000, np.float32), 8000)
    with pytest.raises(NoUsableClipsError, match="2 file\\(s\\) rejected") as e:
        run(bad, tmp_path / "s")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()  # the empty store this run made is removed


def test_worker_count_does_not_change_content(data: Path, tmp_path: Path) -> None:
    one = run(data, tmp_path / "one", workers=1, batch_size=1, device="cpu")
    two = run(data, tmp_path / "two", workers=2, batch_size=64, device="cpu")
    assert one["fingerprint"] == two["fingerprint"] and one["device"] == "cpu"
    a, b = MelStore.open(tmp_path / "one"), MelStore.open(tmp_path / "two")
    np.testing.assert_array_equal(a.load()[0], b.load()[0])


def test_auto_pool_is_threads_for_small_jobs_and_processes_for_big_ones() -> None:
    from clips.pools import AUTO_PROCESSES_FILES, resolve_pool

    assert AUTO_PROCESSES_FILES == 5000
    assert resolve_pool("auto", 4999, 2, "cpu") == "threads"
    assert resolve_pool("auto", 5000, 2, "cpu") == "processes"
    assert resolve_pool("auto", 9800, 1, "cpu") == "threads"  # one worker: no gain
    assert resolve_pool("auto", 9800, 2, "cuda") == "threads"  # mel on the GPU: threads
    for pool in ("threads", "processes", "dask"):
        assert resolve_pool(pool, 9800, 2, "cpu") == pool  # asked for: kept


def test_warm_up_starts_the_forkserver_that_the_pool_then_forks_from() -> None:
    """`warm_worker_processes` (run while a command waits for its Prefect server) starts
    the forkserver only when the run may use processes, and the pool's workers are then
    forked by that very forkserver (a fresh interpreter: the forkserver is per process)."""
    import subprocess
    import sys

    code = (
        "import os\n"
        "from clips.pools import ProcessRunner, warm_worker_processes\n"
        "from gan.mel_config import MelConfig\n"
        "def kids():\n"
        "    out = set()\n"
        "    for p in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        "            stat = open(f'/proc/{p}/stat').read()\n"
        "        except OSError:\n"
        "            continue\n"
        "        if int(stat[stat.rindex(')') + 2:].split()[1]) == os.getpid():\n"
        "            out.add(int(p))\n"
        "    return out\n"
        "refused = [warm_worker_processes('threads', 2, 'cpu'),\n"
        "           warm_worker_processes('auto', 1, 'cpu'),\n"
        "           warm_worker_processes('dask', 2, 'cpu')]\n"
        "assert refused == [False] * 3 and not kids(), (refused, kids())\n"
        "assert warm_worker_processes('auto', 2, 'cpu')\n"
        "(server,) = [p for p in kids()  # beside it: multiprocessing's resource tracker\n"
        "             if b'forkserver' in open(f'/proc/{p}/cmdline', 'rb').read()]\n"
        "runner = ProcessRunner(MelConfig(), 'cpu', 1)\n"
        "print(runner._pool.submit(os.getppid).result() == server)\n"
        "runner.close()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True"]


def test_auto_pool_past_its_threshold_runs_processes_with_the_same_rows(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clips import pools

    monkeypatch.setattr(pools, "AUTO_PROCESSES_FILES", 3)  # 6 files: a "big" job
    big = run(data, tmp_path / "big", pool="auto", device="cpu")
    small = run(data, tmp_path / "small", pool="threads", device="cpu")
    assert big["pool"] == "processes" and small["pool"] == "threads"
    assert big["fingerprint"] == small["fingerprint"]
    np.testing.assert_array_equal(MelStore.open(tmp_path / "big").load()[0],
                                  MelStore.open(tmp_path / "small").load()[0])


def test_auto_device_runs_the_mel_on_the_gpu_when_cuda_has_one(data: Path,
                                                                tmp_path: Path) -> None:
    auto = run(data, tmp_path / "auto")
    assert auto["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = run(data, tmp_path / "cpu", device="cpu")
    assert auto["fingerprint"] == cpu["fingerprint"]  # same files, labels and row counts
    a, b = MelStore.open(tmp_path / "auto").load()[0], MelStore.open(tmp_path / "cpu").load()[0]
    assert_same_power(a, b)  # a GPU's FFT rounds differently (equal on the CPU)


def test_store_inside_data_dir_and_bad_knobs(data: Path) -> None:
    from tasks.precompute import PrecomputeError

    with pytest.raises(PrecomputeError, match="invalid batch_size: .* greater than or equal "
                       "to 1 .got 0."):
        run(data, data / "mels.zarr", batch_size=0)
    with pytest.raises(PrecomputeError, match="invalid pool: must be one of auto, threads, "
                       "processes, dask, not 'fork'"):
        run(data, data / "mels.zarr", pool="fork")
    with pytest.raises(PrecomputeError, match="unknown device 'gpu0'"):
        run(data, data / "mels.zarr", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(PrecomputeError, match="CUDA is not available"):
            run(data, data / "mels.zarr", device="cuda")
    assert not (data / "mels.zarr").exists()
    s = run(data, data / "mels.zarr")  # the store is not mistaken for a class folder
    assert "mels.zarr" not in s["classes"] and s["empty_classes"] == []
    assert run(data, data / "mels.zarr")["processed_files"] == 0


def test_batches_and_files_in_flight_are_bounded_in_bytes(
        tmp_path: Path, write_tone: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Appends stay within BATCH_BYTES (plus one file), files in flight within
    IN_FLIGHT_BYTES once the rows per file are known, and the last batches shrink so that
    little is written after the last file; the content equals one-file batches."""
    import tasks.precompute as tp
    from clips.features import FeatureExtractor
    from storage.store_writer import MelStoreWriter

    root = tmp_path / "data"
    for i in range(40):  # 1 s at 8 kHz: 4 rows of 32x32 float16 (2 KiB each) per file
        write_tone(f"c{i % 2}/t{i:02d}.wav", seconds=1.0, sr=8000, freq=200 + 20 * i,
                   root=root)
    row, per_file = 32 * 32 * 2, 4 * 32 * 32 * 2
    monkeypatch.setattr(tp, "BATCH_BYTES", 5 * per_file)
    monkeypatch.setattr(tp, "TAIL_BATCH_BYTES", per_file)
    monkeypatch.setattr(tp, "IN_FLIGHT_BYTES", 6 * per_file)
    monkeypatch.setattr(tp, "MIN_IN_FLIGHT", 1)
    appended: list[int] = []
    in_flight: list[int] = []  # files started but not yet appended, at each append
    orig_append = MelStoreWriter.append

    def append(self: MelStoreWriter, items: list) -> int:
        n = orig_append(self, items)
        appended.append(n)
        in_flight.append(len(started) - sum(appended) // 4)
        return n

    started: list[str] = []
    orig_extract = FeatureExtractor.extract

    def extract(self: FeatureExtractor, abs_path: str, path: str, *a: object) -> object:
        started.append(path)
        return orig_extract(self, abs_path, path, *a)

    monkeypatch.setattr(MelStoreWriter, "append", append)
    monkeypatch.setattr(FeatureExtractor, "extract", extract)
    s = run(root, tmp_path / "s", batch_size=1000, workers=2)
    assert s["rows"] == 160 and sum(appended) == 160
    assert max(appended) * row <= 5 * per_file + per_file
    assert appended[-1] < appended[0]  # the tail is written in smaller pieces
    assert max(in_flight[1:]) <= 6  # IN_FLIGHT_BYTES / bytes per file
    assert len(started) == 40  # each file computed once
    monkeypatch.undo()
    ref = run(root, tmp_path / "ref", batch_size=1, workers=1)
    assert ref["fingerprint"] == s["fingerprint"]
    np.testing.assert_array_equal(MelStore.open(tmp_path / "s").load()[0],
                                  MelStore.open(tmp_path / "ref").load()[0])


def test_cli_cutting_policies_are_recorded_in_the_store(data: Path, tmp_path: Path) -> None:
    from audio_wgan.cli import main

    store = tmp_path / "s"
    args = ["precompute", str(data), "--store", str(store), "--sample-rate", "8000",
            "--n-fft", "256", "--hop-length", "64", "--n-mels", "32", "--frames", "32"]
    assert main([*args, "--tail-policy", "pad", "--pad-policy", "loop"]) == 0
    cfg = MelStore.open(store).mel_config
    assert (cfg.tail_policy, cfg.pad_policy) == ("pad", "loop")
    assert main(args) == 0  # an existing store keeps its own policies
    assert main([*args, "--pad-policy", "noise"]) == 2  # and refuses other ones
