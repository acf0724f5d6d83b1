"""The mel store on S3 (moto's real server on loopback, authentication on): precompute,
incremental re-runs, a SIGKILLed writer, the writer lease, compaction, training, and the
one-line refusals of a missing bucket and wrong credentials through the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from s3_server import S3Server, moto_s3
from store_fixtures import assert_same_live_content, build, expected_rows, new_file

from storage.mel_store import MelStore
from storage.store_errors import StoreError
from storage.store_lock import StoreBusyError
from storage.store_manifest import read_manifest
from storage.store_object import ObjectBackend, read_lease, write_lease
from storage.store_writer import MelStoreWriter

pytest.importorskip("s3fs")
pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "frames": 32}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_s3() as server:
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """This process reaches the server through the usual AWS variables, as a user would."""
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    return s3


@pytest.fixture
def bucket(s3_env: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test."""
    name = "t-" + request.node.name.replace("_", "-")[:40].strip("-").lower()
    return s3_env.make_bucket(name)


def clips(root: Path, write_tone: Callable[..., Path], n: int = 6) -> Path:
    for c in ("ant", "bee", "cat"):
        for i in range(n):
            write_tone(f"{c}/{i:02d}.wav", seconds=0.5, sr=16000,
                       freq=200 + 37 * i + 400 * len(c), root=root)
    return root


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "audio_wgan.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def last_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------ writer and reader
def test_store_on_s3_reads_back_what_was_written_and_lease_guards_it(bucket: str) -> None:
    url = f"s3://{bucket}/p/mels.zarr"
    files = build(url, [new_file(f"c{i % 2}/{i}.wav", 3 + i, i) for i in range(6)])
    st = MelStore.open(url)
    assert st.path == url and st.location == url and len(st) == 33
    np.testing.assert_array_equal(st.load()[0], expected_rows(files))
    assert st.verify()["ok"] and st.verify()["without_checksum"] == 0
    assert st.info()["bytes"] > 0
    streamed = np.concatenate([x for x, _ in st.iter_batches(4, seed=0, drop_last=False)])
    assert sorted(map(bytes, streamed)) == sorted(map(bytes, expected_rows(files)))

    be = ObjectBackend(url, lease_s=600)
    w = MelStoreWriter.create_or_open(be)
    holder = read_lease(be)["holder"]
    assert holder == be.lease.holder and str(os.getpid()) in holder
    with pytest.raises(StoreBusyError, match=r"being written by another precompute \(holder "
                       + holder.replace("(", r"\(").replace(")", r"\)")):
        MelStoreWriter.create_or_open(url)
    w.append([new_file("c9/new.wav", 2, 99)])
    assert len(MelStore.open(url)) == 33  # appended, not committed: invisible
    w.commit()
    assert len(MelStore.open(url)) == 35
    w.close()
    assert read_lease(be) is None  # released: the next writer creates it anew
    MelStoreWriter.create_or_open(url).close()


def test_dead_writers_lease_is_taken_over_and_a_lapsed_writer_cannot_commit(
        bucket: str) -> None:
    url = f"s3://{bucket}/mels.zarr"
    build(url, [new_file("a/1.wav", 3, 1), new_file("b/2.wav", 4, 2)])
    be = ObjectBackend(url)
    # a live lease of another writer: refused in one line naming it
    write_lease(be, "elsewhere pid 4242 (deadbeef)", time.time() + 3600)
    with pytest.raises(StoreBusyError) as busy:
        MelStoreWriter.create_or_open(url)
    assert "holder elsewhere pid 4242 (deadbeef)" in str(busy.value)
    assert "\n" not in str(busy.value)
    # the same writer dead, its lease run out (written as it would be found then)
    write_lease(be, "elsewhere pid 4242 (deadbeef)", time.time() - 1)
    a = MelStoreWriter.create_or_open(ObjectBackend(url, lease_s=600))
    assert read_lease(be)["holder"] == a.backend.lease.holder

    # writer A stalls past its lease; B takes over and commits; A's next commit is refused
    write_lease(be, a.backend.lease.holder, time.time() - 1)
    b = MelStoreWriter.create_or_open(ObjectBackend(url, lease_s=600))
    b.append([new_file("c/3.wav", 2, 3)])
    b.commit()
    a.append([new_file("d/4.wav", 5, 4)])
    with pytest.raises(StoreError, match="can no longer commit"):
        a.commit()
    a.close()  # releases nothing of B's
    assert read_lease(be)["holder"] == b.backend.lease.holder
    # even past the lease check, the manifest PUT is conditional on the ETag A last saw
    stale = ObjectBackend(url)
    read_manifest(stale)
    b.remove(["a/1.wav"])
    b.commit()
    with pytest.raises(StoreError, match="another writer committed manifest.json"):
        stale.commit("manifest.json", b"{}")
    b.close()
    st = MelStore.open(url)
    assert sorted(e.path for e in st.files()) == ["b/2.wav", "c/3.wav"]


def test_compaction_keeps_the_old_generation_for_the_grace_period(bucket: str) -> None:
    url = f"s3://{bucket}/mels.zarr"
    files = build(url, [new_file(f"k{i % 3}/{i}.wav", 40, i) for i in range(6)])
    w = MelStoreWriter.create_or_open(ObjectBackend(url, grace_s=3600))
    w.remove(["k0/0.wav", "k1/1.wav"])
    w.commit()
    reader = MelStore.open(url)  # opened before the compaction, on generation 0
    before = reader.load()[0]
    done = w.compact()
    w.close()
    assert done["dropped_rows"] == 80 and done["generation"] == 1
    assert done["old_generation_kept"] == 1  # within the grace period
    np.testing.assert_array_equal(reader.load()[0], before)  # still readable
    st = MelStore.open(url)
    assert st.manifest.generation == 1 and st.info()["dead_rows"] == 0
    kept = {p: f for p, f in files.items() if p not in ("k0/0.wav", "k1/1.wav")}
    np.testing.assert_array_equal(st.load()[0], expected_rows(kept))
    assert ObjectBackend(url).generations() == {0, 1}
    # a later writer once the grace period is over (0 here: no waiting in tests)
    MelStoreWriter.create_or_open(ObjectBackend(url, grace_s=0)).close()
    be = ObjectBackend(url)
    assert be.generations() == {1}
    with pytest.raises(StoreError, match="was compacted after this reader opened it"):
        reader.load()  # one line: reopen, not "damaged"
    assert not [n for n in be.names() if n.startswith(".retired")]
    np.testing.assert_array_equal(MelStore.open(url).load()[0], expected_rows(kept))


# ------------------------------------------------------------------ through the flows
@pytest.mark.usefixtures("prefect_harness")
def test_precompute_into_s3_equals_local_and_reruns_incrementally(
        bucket: str, tmp_path: Path, write_tone: Callable[..., Path]) -> None:
    from flows.precompute import precompute

    data = clips(tmp_path / "data", write_tone)
    url = f"s3://{bucket}/runs/mels.zarr"
    first = precompute(str(data), url, mel=MEL, batch_size=4, workers=1)
    assert first["store"] == url and first["files"] == 18 and first["added_files"] == 18
    precompute(str(data), str(tmp_path / "local"), mel=MEL, batch_size=4, workers=1)
    assert_same_live_content(MelStore.open(url), MelStore.open(tmp_path / "local"))

    again = precompute(str(data), url, mel=MEL, batch_size=4, workers=1)
    assert again["processed_files"] == 0 and not again["changed"]

    write_tone("dog/00.wav", seconds=0.5, sr=16000, freq=950, root=data)
    (data / "ant" / "03.wav").unlink()
    third = precompute(str(data), url, mel=MEL, batch_size=4, workers=1)
    assert (third["added_files"], third["removed_files"], third["unchanged_files"]) == \
        (1, 1, 17)
    precompute(str(data), str(tmp_path / "local"), mel=MEL, batch_size=4, workers=1)
    assert_same_live_content(MelStore.open(url), MelStore.open(tmp_path / "local"))
    assert read_lease(ObjectBackend(url)) is None


KILLED_RUN = """
import sys
from flows.precompute import precompute
precompute(sys.argv[1], sys.argv[2], mel={mel}, batch_size=2, workers=1)
"""


@pytest.mark.usefixtures("prefect_harness")
def test_sigkill_during_precompute_then_rerun_equals_an_uninterrupted_run(
        bucket: str, s3_env: S3Server, tmp_path: Path,
        write_tone: Callable[..., Path]) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.precompute import precompute

    data = clips(tmp_path / "data", write_tone, n=4)
    precompute(str(data), str(tmp_path / "clean"), mel=MEL, batch_size=2, workers=1)
    url = f"s3://{bucket}/mels.zarr"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           # the 3rd batch's rows written, its manifest not committed
           "AUDIO_WGAN_KILL_AT": "rows_written:3"}
    p = subprocess.run([sys.executable, "-c", KILLED_RUN.format(mel=MEL), str(data), url],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    st = MelStore.open(url)  # the last committed manifest serves; no uncommitted row shows
    assert len(st.files()) in (2, 4) and len(st) == 2 * len(st.files())
    assert st.verify()["ok"]
    assert st.manifest.rows == len(st)
    # the dead writer's lease is still there, and refuses the next writer until it expires
    be = ObjectBackend(url)
    dead = read_lease(be)
    assert dead is not None and f"pid {dead['holder'].split('pid ')[1].split()[0]}" in \
        dead["holder"]
    with pytest.raises(StoreBusyError, match="holder " + dead["holder"].split(" (")[0]):
        MelStoreWriter.create_or_open(url)
    write_lease(be, dead["holder"], time.time() - 1)  # as found once its expiry passed
    again = precompute(str(data), url, mel=MEL, batch_size=2, workers=1)
    assert again["files"] == 12
    st = MelStore.open(url)
    assert_same_live_content(st, MelStore.open(tmp_path / "clean"))
    assert st.verify()["ok"] and st.manifest.stats["fingerprint"] == st.fingerprint


@pytest.mark.usefixtures("prefect_harness")
def test_training_and_evaluation_read_the_s3_store(
        bucket: str, tmp_path: Path, mlflow_uri: str, write_tone: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.precompute import precompute
    from flows.train import train

    data = clips(tmp_path / "data", write_tone, n=4)
    url = f"s3://{bucket}/mels.zarr"
    precompute(str(data), url, mel=MEL, workers=1)
    out = train(store=url, preset="tiny", epochs=1, batch_size=8, checkpoint_every=1,
                checkpoint_dir=str(tmp_path / "ck"), register=False, render=False,
                device="cpu")
    assert out["epoch"] == 1 and out["fingerprint"] == MelStore.open(url).fingerprint
    assert Path(out["checkpoint"]).is_file()

    from storage.model_bundle import load_bundle_dir
    from tasks.evaluate import evaluate

    monkeypatch.chdir(tmp_path)  # the classifier of a store URL is cached under ./work/
    metrics = evaluate(load_bundle_dir(out["bundle"]), url, n_per_class=2)
    assert metrics  # scored against the S3 store
    assert list((tmp_path / "work" / "classifiers").glob("mels.zarr-*.classifier/*.pt"))


# ------------------------------------------------------------------ one-line refusals
@pytest.mark.usefixtures("prefect_harness")
def test_missing_bucket_and_wrong_credentials_are_one_line_exit_2(
        bucket: str, s3_env: S3Server, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    url = f"s3://{bucket}/mels.zarr"
    build(url, [new_file("a/1.wav", 3, 1)])
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    ok = cli("store-info", url, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "1 files" in ok.stdout or "from 1 files" in ok.stdout

    gone = cli("store-info", "s3://no-such-bucket/mels.zarr", env=env)
    assert gone.returncode == 2
    assert last_line(gone.stderr).endswith(
        "store s3://no-such-bucket/mels.zarr: bucket no-such-bucket does not exist "
        "(create it, or check AWS_ENDPOINT_URL)")
    assert len(gone.stderr.strip().splitlines()) == 1

    wrong = cli("compact", url, env={**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert wrong.returncode == 2
    assert "refused the credentials (SignatureDoesNotMatch" in last_line(wrong.stderr)
    assert len(wrong.stderr.strip().splitlines()) == 1
    unknown = cli("store-info", url, env={**env, "AWS_ACCESS_KEY_ID": "AKIANOBODY"})
    assert unknown.returncode == 2
    assert "refused the credentials (InvalidAccessKeyId" in last_line(unknown.stderr)

    data = tmp_path / "d" / "a"
    data.mkdir(parents=True)
    (data / "x.wav").write_bytes(b"")
    pre = cli("precompute", str(tmp_path / "d"), "--store", "s3://no-such-bucket/m.zarr",
              env=env)
    assert pre.returncode == 2
    assert last_line(pre.stderr).endswith("bucket no-such-bucket does not exist (create it, "
                                          "or check AWS_ENDPOINT_URL)")


@pytest.mark.usefixtures("prefect_harness")
def test_retrain_flow_on_an_s3_store(bucket: str, tmp_path: Path, mlflow_uri: str) -> None:
    from registry_fixtures import TINY_MEL

    from flows.retrain import retrain

    url = f"s3://{bucket}/demo.zarr"
    params = {"data_dir": str(tmp_path / "demo"), "store": url, "preset": "tiny",
              "epochs": 1, "mel": {k: getattr(TINY_MEL, k) for k in MEL}, "demo": True,
              "demo_clips_per_class": 2, "checkpoint_dir": str(tmp_path / "ckpt"),
              "samples_dir": str(tmp_path / "s"), "batch_size": 8, "eval_per_class": 2,
              "render_per_class": 1, "device": "cpu"}
    first = retrain(**params)
    assert not first["skipped"] and first["version"] == 1
    assert first["fingerprint"] == MelStore.open(url).fingerprint
    second = retrain(**params)  # the S3 store's content is unchanged: nothing to train
    assert second["skipped"] and "store unchanged: v1" in second["reason"]
