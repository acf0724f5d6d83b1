"""The quick commands start at once: `--help` (of every command), `models` and `store-info`
import neither torch nor Prefect nor rich nor Zarr nor numpy (`models` reads the embedded
SQLite registry itself and imports MLflow only for other registries). Each runs as the
console script runs it, in a fresh interpreter, which then reports what it imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from store_fixtures import build, new_file

from audio_wgan.cli import COMMAND_MODULES

ROOT = Path(__file__).resolve().parents[1]
# rich: only to draw a bar; zarr and numpy: store-info answers from the manifest
HEAVY = ("torch", "torchaudio", "prefect", "mlflow", "rich", "zarr", "numpy")
PROBE = ("import sys\n"
         "from audio_wgan.cli import main\n"
         "rc = main(sys.argv[1:])\n"
         f"print('imported:', ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
         "sys.exit(rc)\n")


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None
            ) -> tuple[int, set[str], str]:
    """Exit code, the heavy modules the command imported, and its stderr."""
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, text=True,
                         capture_output=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("imported:")]
    assert line, out.stdout[-2000:] + out.stderr[-2000:]
    return out.returncode, {m for m in line[-1].split(":", 1)[1].strip().split(",") if m}, \
        out.stderr


def command_names() -> list[str]:
    return [name.replace("_", "-") for name in COMMAND_MODULES]


def test_top_level_help(tmp_path: Path) -> None:
    rc, imported, _ = run_cli(["--help"], tmp_path)
    assert rc == 0
    assert imported == set()


@pytest.mark.parametrize("command", command_names())
def test_every_command_help(tmp_path: Path, command: str) -> None:
    rc, imported, _ = run_cli([command, "--help"], tmp_path)
    assert rc == 0
    assert imported == set()


def test_store_info(tmp_path: Path) -> None:
    store = tmp_path / "mels.zarr"
    build(store, [new_file("a/x.wav", 3, 1), new_file("b/y.wav", 2, 2)])
    rc, imported, err = run_cli(["store-info", str(store), "--json"], tmp_path)
    assert rc == 0, err[-2000:]
    assert imported == set()


def test_store_info_refusal(tmp_path: Path) -> None:
    """The one-line refusal of a folder that is no store takes the quick path too."""
    rc, imported, err = run_cli(["store-info", str(tmp_path)], tmp_path)
    assert rc == 2
    assert err.strip().splitlines()[-1].startswith("audio-wgan store-info: error:")
    assert imported == set()


def test_models_reads_sqlite_without_mlflow(tmp_path: Path, mlflow_uri: str) -> None:
    """A registry MLflow migrated (empty) is read directly (storage.registry_listing), when
    the reader knows its schema (test_registry_listing fails on one it does not know)."""
    import sqlite3

    from storage.registry_listing import schema_known, sqlite_path

    with sqlite3.connect(sqlite_path(mlflow_uri)) as con:
        if not schema_known(con):
            pytest.skip("the installed MLflow's schema is not one the fast reader knows")
    rc, imported, err = run_cli(["models"], tmp_path, {"MLFLOW_TRACKING_URI": mlflow_uri,
                                                       "MLFLOW_REGISTRY_URI": mlflow_uri})
    assert rc == 2  # an empty registry: one line naming the model
    assert "no registered model named 'audio-wgan'" in err.strip().splitlines()[-1]
    assert imported == set()


def test_models_asks_mlflow_about_other_registries(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}?timeout=5"  # a URI the reader leaves alone
    rc, imported, err = run_cli(["models"], tmp_path, {"MLFLOW_TRACKING_URI": uri})
    assert rc == 2
    assert "no registered model named 'audio-wgan'" in err.strip().splitlines()[-1]
    assert "mlflow" in imported


def test_the_temporary_prefect_server_gets_time_to_migrate(tmp_path: Path) -> None:
    """A first flow command on a new machine waits for Prefect's temporary server to
    migrate its database (Prefect's own default wait, 20 s, is too short on 2 busy cores);
    a value the user set is kept."""
    probe = ("import os, sys\nfrom audio_wgan.cli import main\nmain(['--help'])\n"
             "print('timeout:', os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS'])")
    env = {k: v for k, v in os.environ.items()
           if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    for given, expected in ((None, "300"), ("42", "42")):
        run_env = {**env, "PYTHONPATH": str(ROOT)}
        if given:
            run_env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = given
        out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, text=True,
                             capture_output=True, timeout=300, env=run_env)
        assert f"timeout: {expected}" in out.stdout, out.stderr[-2000:]


@pytest.mark.usefixtures("prefect_harness")
def test_an_unchanged_precompute_imports_no_torch(tmp_path: Path) -> None:
    """Nothing to decode: the flow runs (on the session's Prefect server), reports the
    store unchanged, and neither torch nor a pool is started; the store was left settled
    (storage.store_settled), so neither Zarr nor numpy is imported either."""
    from prefect.settings import PREFECT_API_URL
    from registry_fixtures import write_tone_dataset

    data = write_tone_dataset(tmp_path / "data", clips=3)
    store = tmp_path / "mels.zarr"
    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    args = ["precompute", str(data), "--store", str(store), "--workers", "1"]
    rc, imported, err = run_cli(args, tmp_path, env)  # the first run decodes: torch
    assert rc == 0, err[-2000:]
    assert "torch" in imported
    rc, imported, err = run_cli(args, tmp_path, env)
    assert rc == 0, err[-2000:]
    assert not imported & {"torch", "zarr", "numpy"} and "prefect" in imported, imported


def test_run_checks_its_training_knobs_without_torch(tmp_path: Path) -> None:
    """`run` refuses a bad training knob in one line before any work, and the check
    (flows.train_params) needs neither torch nor MLflow (an unchanged run imports neither:
    tests/test_retrain.py)."""
    rc, imported, err = run_cli(["run", "--batch-size", "0"], tmp_path)
    assert rc == 2
    assert err.strip().splitlines()[-1].endswith("invalid batch_size: Input should be "
                                                 "greater than or equal to 1 (got 0)")
    assert not imported & {"torch", "mlflow"}, imported
    assert not (tmp_path / "work").exists()  # nothing written


@pytest.mark.usefixtures("prefect_harness")
def test_a_precompute_on_worker_processes_leaves_torch_to_them(tmp_path: Path) -> None:
    """With worker processes on the CPU, the process that writes the store imports no
    torch: the workers decode (forked from a forkserver that imported it once), the
    outcomes they send back are plain data (clips.outcome), and the device is known
    without torch."""
    from prefect.settings import PREFECT_API_URL
    from registry_fixtures import write_tone_dataset

    from storage.mel_store import MelStore

    data = write_tone_dataset(tmp_path / "data", clips=3)
    store = tmp_path / "mels.zarr"
    env = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    args = ["precompute", str(data), "--store", str(store), "--workers", "2", "--pool",
            "processes", "--device", "cpu", "--json"]
    rc, imported, err = run_cli(args, tmp_path, env)
    assert rc == 0, err[-2000:]
    assert "torch" not in imported and {"prefect", "zarr", "numpy"} <= imported
    assert len(MelStore.open(store)) > 0
