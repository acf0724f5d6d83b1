"""Create (once) the automation that marks silent flow runs Crashed: "zombie" detection.

A self-hosted Prefect server does not notice a flow run whose machine or worker died: the
run stays Running. Flow runs send a heartbeat event every PREFECT_FLOWS_HEARTBEAT_FREQUENCY
seconds (scripts/serve.sh sets 30 for its worker); this proactive trigger fires when a run's
heartbeat is followed by nothing (no heartbeat, no final state) for `--within` seconds and
sets the run Crashed, which also frees its deployment concurrency slot.

    .venv/bin/python scripts/zombie_automation.py [--within 90]   # PREFECT_API_URL set
"""

from __future__ import annotations

import argparse
from datetime import timedelta

NAME = "audio-wgan: crash zombie flow runs"


def ensure_zombie_automation(within_s: float = 90.0) -> str:
    """Create the automation unless one with NAME exists; return its id."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        existing = Automation.read(name=NAME)
    except ValueError:  # not found
        existing = None
    if existing is not None:
        return str(existing.id)
    automation = Automation(
        name=NAME,
        description="Marks a flow run Crashed when its heartbeats stop (worker or machine lost).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"No heartbeat for {within_s:.0f} s: worker or machine lost.")],
    ).create()
    return str(automation.id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--within", type=float, default=90.0,
                    help="seconds of silence after a heartbeat before a run is Crashed")
    args = ap.parse_args()
    print(f"automation '{NAME}': {ensure_zombie_automation(args.within)}")


if __name__ == "__main__":
    main()
