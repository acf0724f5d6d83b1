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
