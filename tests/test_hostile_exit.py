"""The one-line reason is the last line of stderr, also after a Prefect flow ran: Prefect's
background services (events, API logs) drain at exit and used to log after it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.usefixtures("prefect_harness")
def test_reason_is_the_last_stderr_line_after_a_failed_flow(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # the session's test server (a real one on loopback), as a user's PREFECT_API_URL
    env.update(PREFECT_API_URL=str(PREFECT_API_URL.value()),
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    missing = tmp_path / "no-such-data"
    res = subprocess.run(
        [sys.executable, "-m", "audio_wgan.cli", "precompute", str(missing), "--store",
         str(tmp_path / "s.zarr")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert lines[-1] == f"audio-wgan precompute: error: data directory {missing} does not exist"
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_unreachable_prefect_api_is_one_line_before_any_work(tmp_path: Path) -> None:
    from prefect_services import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env.update(PREFECT_API_URL=url, PREFECT_HOME=str(tmp_path / "prefect"))
    (tmp_path / "data" / "c").mkdir(parents=True)
    res = subprocess.run(
        [sys.executable, "-m", "audio_wgan.cli", "precompute", str(tmp_path / "data"),
         "--store", str(tmp_path / "s.zarr")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1] == (
        f"audio-wgan precompute: error: the Prefect API at {url} does not answer "
        f"(ConnectError); start that server or unset PREFECT_API_URL")
    assert "Traceback" not in res.stderr and not (tmp_path / "s.zarr").exists()
