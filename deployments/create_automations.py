"""Create (or update) the zombie-run automation: a flow run that stops sending heartbeats is marked Crashed.

``python deployments/create_automations.py [--within SECONDS]`` against PREFECT_API_URL.

Flow runs started from deployments emit ``prefect.flow-run.heartbeat`` events every
PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (180 by default in Prefect 3.9; the older name
PREFECT_RUNNER_HEARTBEAT_FREQUENCY is still read; at least 30). Set it on the workers (Dockerfile, prefect.yaml
job variables: 30) and when running this script, so the window matches. This
automation expects, after each heartbeat, another heartbeat or a terminal state within 3x that frequency;
when none comes (the machine died, the container was evicted, the process was SIGKILLed and no runner is
left to report it) the run is set to Crashed. ``ingest_queue`` then sees the Crashed run and requeues its
row (flows/ingest.py), so the job is rendered again on a later attempt. This follows Prefect's documented
recipe (docs: "How to detect and respond to zombie flows").
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

NAME = "mindscript: crash zombie flow runs"
MISSED_BEATS = 3


def heartbeat_frequency() -> int | None:
    from prefect.settings import get_current_settings

    return get_current_settings().flows.heartbeat_frequency


def build(within_s: float) -> object:
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return Automation(
        name=NAME,
        description=f"A flow run with no heartbeat for {within_s:g} s is marked Crashed "
                    "(ingest_queue then requeues its job).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"No heartbeat for {within_s:g} s: marked Crashed (zombie run).")],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--within", type=float, default=None,
                        help="seconds without a heartbeat before a run is crashed (default: 3x the frequency)")
    args = parser.parse_args(argv)
    freq = heartbeat_frequency()
    if args.within is None and freq is None:
        print("PREFECT_FLOWS_HEARTBEAT_FREQUENCY is not set (got None): flow runs send no heartbeats, so the "
              "automation would crash every run. Set it (>= 30) here and on the workers, or pass --within.",
              file=sys.stderr)
        return 2
    within = args.within if args.within is not None else float(MISSED_BEATS * (freq or 0))
    from prefect.automations import Automation

    automation = build(within)
    try:
        existing = Automation.read(name=NAME)
    except ValueError:
        existing = None
    if existing is not None:
        automation.id = existing.id  # type: ignore[attr-defined]
        automation.update()  # type: ignore[attr-defined]
        print(f"updated automation {NAME!r} ({existing.id}): crash after {within:g} s without a heartbeat")
    else:
        created = automation.create()  # type: ignore[attr-defined]
        print(f"created automation {NAME!r} ({created.id}): crash after {within:g} s without a heartbeat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
