"""MLflow at scale, for real on loopback: PostgreSQL (initdb + pg_ctl in a temp dir) as the
backend store, moto's S3 server as the artifact store, and `scripts/serve.sh
--tracking-server --mlflow-only` running `mlflow server` on both. The client trains,
registers, promotes and generates from `models:/audio-wgan@champion` through the server
with no S3 credentials of its own (proxied artifacts). Everything is stopped, also when the
test fails."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from prefect_services import ROOT, base_env, free_port, stop, tail, wait_http_ok
from registry_fixtures import TINY_MEL, one_torch_thread, write_tone_dataset

pytest.importorskip("psycopg2", reason="needs the scale extra: pip install -e '.[scale]'")
pytest.importorskip("moto", reason="needs the scale extra: pip install -e '.[scale]'")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent
MEL = {k: getattr(TINY_MEL, k) for k in ("sample_rate", "n_fft", "hop_length", "n_mels",
                                         "frames")}
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "audio-wgan-mlflow"


def pg_bin(name: str) -> str | None:
    """PostgreSQL's server programs: on PATH, or where Debian's packages put them."""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _pg_missing() -> str | None:
    if not (pg_bin("initdb") and pg_bin("pg_ctl")):
        return "PostgreSQL's initdb/pg_ctl are not installed (bash .ci/run installs them)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no 'postgres' user to run PostgreSQL as"
    return None


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_torch_thread()


@dataclass
class Postgres:
    port: int
    user: str = "mlflow"
    database: str = "mlflow"

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def query(self, sql: str) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                                dbname=self.database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()


@contextmanager
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL on a loopback port (as the `postgres` user when root, which
    PostgreSQL refuses to run as); stopped and removed on exit."""
    reason = _pg_missing()
    if reason:
        pytest.skip(reason)
    import psycopg2

    # not under pytest's tmp_path: that is private to root, and the server runs as postgres
    tmp = Path(tempfile.mkdtemp(prefix="audio-wgan-pg-"))
    as_user: dict = {}
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
        as_user = {"user": "postgres", "group": "postgres"}
    pg = Postgres(free_port())
    data, log = tmp / "data", tmp / "postgres.log"
    ctl = [pg_bin("pg_ctl"), "-D", str(data), "-l", str(log)]
    started = False
    try:
        try:
            subprocess.run([pg_bin("initdb"), "-D", str(data), "-U", pg.user,
                            "--auth=trust", "-E", "UTF8", "--no-instructions"], check=True,
                           capture_output=True, cwd=tmp, **as_user)
            started = True  # from here on, stop it whatever happens
            # -w: pg_ctl returns once the server accepts connections; -F: no fsync (a test)
            subprocess.run([*ctl, "-w", "-t", "120", "-o",
                            f"-h 127.0.0.1 -p {pg.port} -k {tmp} -F", "start"], check=True,
                           capture_output=True, cwd=tmp, **as_user)
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"PostgreSQL did not start: {exc.stderr!r}\n{tail(log)}")
        conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user=pg.user,
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {pg.database}")
        conn.close()
        yield pg
    finally:
        if started:
            subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True, cwd=tmp,
                           **as_user)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def moto_s3(tmp: Path) -> Iterator[str]:
    """moto's S3 server (`moto_server`) on a loopback port, with the artifact bucket."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "moto.log", "wb")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=base_env(),
                            start_new_session=True)
    try:
        wait_http_ok(f"{url}/moto-api/", proc, tmp / "moto.log", 120, "moto_server")
        s3(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        stop(proc)
        log.close()


def s3(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@contextmanager
def tracking_server(tmp: Path, pg: Postgres, s3_url: str) -> Iterator[str]:
    """`scripts/serve.sh --tracking-server --mlflow-only`: the documented way."""
    port = free_port()
    env = base_env({**S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": s3_url,
                    "MLFLOW_BACKEND_STORE_URI": pg.uri,
                    "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKET}/mlartifacts",
                    "MLFLOW_PORT": str(port), "AUDIO_WGAN_LOG_DIR": str(tmp / "logs")})
    log_path = tmp / "serve.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "serve.sh"), "--tracking-server",
                             "--mlflow-only"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        # the first start migrates the empty PostgreSQL database
        wait_http_ok(f"{uri}/health", proc, log_path, 600, "serve.sh --tracking-server")
        yield uri
    except BaseException:
        print(tail(log_path), tail(tmp / "logs" / "mlflow-server.log"))
        raise
    finally:
        stop(proc, grace=20)
        log.close()


def test_postgres_and_s3_tracking_server(tmp_path: Path, prefect_harness,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.precompute import precompute
    from flows.train import train
    from storage import registry

    data = write_tone_dataset(tmp_path / "data", clips=2)
    store = tmp_path / "mels.zarr"
    precompute(str(data), str(store), mel=MEL)

    with postgres() as pg, moto_s3(tmp_path) as s3_url, \
            tracking_server(tmp_path, pg, s3_url) as uri:
        # the client knows the server's URL and nothing about S3 or PostgreSQL
        for key in (*S3_KEYS, "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_REGISTRY_URI",
                    "AUDIO_WGAN_ARTIFACT_ROOT"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)

        result = train(store=str(store), preset="tiny", epochs=1, batch_size=8,
                       checkpoint_dir=str(tmp_path / "ck"))
        assert result["model_version"] == 1 and result["alias"] == "champion"
        assert registry.list_versions("audio-wgan")[0]["aliases"] == ["champion"]
        exp = registry.client().get_experiment_by_name("audio-wgan")
        assert exp.artifact_location.startswith("mlflow-artifacts:")  # proxied

        # the registry lives in PostgreSQL ...
        assert ("audio-wgan", 1) in pg.query("SELECT name, version FROM model_versions")
        assert ("audio-wgan", "champion", 1) in pg.query(
            "SELECT name, alias, version FROM registered_model_aliases")
        # ... and the weights went through the server into the S3 bucket
        keys = [o["Key"] for o in s3(s3_url).list_objects_v2(
            Bucket=BUCKET, Prefix="mlartifacts/").get("Contents", [])]
        assert any(k.endswith("generator.pt") for k in keys), keys

        out = tmp_path / "generated"
        env = base_env({"MLFLOW_TRACKING_URI": uri})  # no AWS_* keys
        p = subprocess.run([sys.executable, "-m", "audio_wgan.cli", "generate", "--model",
                            "models:/audio-wgan@champion", "--class", "low", "-n", "2",
                            "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        wavs = sorted(out.rglob("*.wav"))
        assert len(wavs) == 2, (p.stdout, p.stderr)
        import soundfile as sf

        audio, sr = sf.read(wavs[0])
        assert sr == TINY_MEL.sample_rate and len(audio) == TINY_MEL.segment_samples
