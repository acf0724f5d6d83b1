"""flows.prefect_heartbeat: sync flow runs no longer wait for the heartbeat thread, and
still send their heartbeat (real temporary Prefect server)."""

from __future__ import annotations

import time

import pytest
from prefect import flow, flow_engine, get_client
from prefect.context import get_run_context
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

import flows  # noqa: F401 - installs the patch
from flows import prefect_heartbeat


@flow(name="heartbeat-probe")
def _probe() -> str:
    return str(get_run_context().flow_run.id)


def test_patch_is_installed_once_by_importing_flows() -> None:
    assert prefect_heartbeat.installed()
    before = flow_engine._send_heartbeats
    assert prefect_heartbeat.install() is True
    assert flow_engine._send_heartbeats is before  # not wrapped twice


@pytest.mark.usefixtures("prefect_harness")
def test_flow_run_still_sends_its_heartbeat() -> None:
    run_id = _probe()
    deadline = time.monotonic() + 30
    events: list = []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            # a new filter each time: its default `until` is the moment it is made
            flt = EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                              resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]))
            events = client.read_events(filter=flt, limit=10).events  # server max: 50
            if events:
                break
            time.sleep(0.5)
        state = client.read_flow_run(run_id).state
    assert events, "no heartbeat event recorded for the flow run"
    assert state is not None and state.is_completed()


@pytest.mark.parametrize("entrypoint", ["flows/precompute.py:precompute", "flows/train.py:train",
                                        "flows/render.py:render", "flows/retrain.py:retrain"])
def test_worker_entrypoints_install_the_patch(entrypoint: str) -> None:
    """A worker loads a deployment's entrypoint as a script, not as part of `flows`: each
    flow module must still bring the patch in (checked in a fresh interpreter)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys; from prefect.flows import load_flow_from_entrypoint; "
            "load_flow_from_entrypoint(sys.argv[1]); "
            "from prefect import flow_engine; "  # not via `flows`: importing it patches
            f"print(getattr(flow_engine._send_heartbeats, {prefect_heartbeat._MARK!r}, False))")
    out = subprocess.run([sys.executable, "-c", code, entrypoint], cwd=root, text=True,
                         capture_output=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"
