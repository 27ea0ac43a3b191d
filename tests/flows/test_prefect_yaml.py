"""prefect.yaml is valid: `prefect deploy --all` against the session's Prefect server creates both deployments
in the process work pool with the documented schedule, concurrency limits, parameters and heartbeat setting."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkQueueCreate

ROOT = Path(__file__).resolve().parent.parent.parent
NAMES = ("render_job/render", "ingest_queue/ingest")


@pytest.fixture
def pool(prefect_server: str) -> Iterator[str]:
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="mindscript", type="process"), overwrite=True)
        client.create_work_pool(WorkPoolCreate(name="mindscript-control", type="process"), overwrite=True)
        for name, priority in (("high", 1), ("low", 3)):
            try:
                client.create_work_queue(WorkQueueCreate(name=name, priority=priority).name, priority=priority,
                                         work_pool_name="mindscript")
            except Exception:  # noqa: BLE001 - already there (a rerun on the same server)
                pass
    yield "mindscript"
    with get_client(sync_client=True) as client:  # other modules serve deployments of the same names
        for name in NAMES:
            try:
                client.delete_deployment(client.read_deployment_by_name(name).id)
            except Exception:  # noqa: BLE001 - not created
                pass


def test_prefect_deploy_all_creates_both_deployments(prefect_server: str, pool: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "prefect"))
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with get_client(sync_client=True) as client:
        render = client.read_deployment_by_name("render_job/render")
        ingest = client.read_deployment_by_name("ingest_queue/ingest")
        queues = {q.name: q.priority for q in client.read_work_queues(work_pool_name=pool)}
    assert queues["high"] < queues["default"] < queues["low"]
    assert render.entrypoint == "flows/render.py:render_job" and render.work_pool_name == pool
    assert render.work_queue_name == "default" and not render.schedules
    # ingest has a pool of its own so its runs never take a render slot
    assert ingest.entrypoint == "flows/ingest.py:ingest_queue" and ingest.work_pool_name == "mindscript-control"
    assert ingest.parameters == {"max_jobs": 16, "capacity": "pool"}
    [schedule] = ingest.schedules
    assert schedule.active and schedule.schedule.interval.total_seconds() == 5  # type: ignore[union-attr]
    assert ingest.global_concurrency_limit is not None and ingest.global_concurrency_limit.limit == 1
    assert ingest.concurrency_options is not None
    assert ingest.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert render.global_concurrency_limit is not None and render.global_concurrency_limit.limit == 16
    for d in (render, ingest):
        assert d.job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"


def test_zombie_automation_is_created_and_updated_with_three_missed_heartbeats(
        prefect_server: str) -> None:
    from prefect.automations import Automation
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    sys.path.insert(0, str(ROOT / "deployments"))
    try:
        import create_automations
    finally:
        sys.path.remove(str(ROOT / "deployments"))
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        assert create_automations.main([]) == 0
        assert create_automations.main([]) == 0  # idempotent: updated, not duplicated
    automation = Automation.read(name=create_automations.NAME)
    trigger = automation.trigger
    assert trigger.within.total_seconds() == 90 and trigger.posture.value == "Proactive"  # type: ignore[union-attr]
    assert trigger.after == {"prefect.flow-run.heartbeat"}  # type: ignore[union-attr]
    assert "prefect.flow-run.Completed" in trigger.expect  # type: ignore[union-attr]
    [action] = automation.actions
    assert action.type == "change-flow-run-state" and action.state.value == "CRASHED"  # type: ignore[union-attr]
    automation.delete()
