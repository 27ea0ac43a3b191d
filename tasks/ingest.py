"""The ingest flow's tasks: reconcile rows with Prefect's view, claim, and turn each row into a flow run."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from mindscript.errors import InvalidJob
from mindscript.job import parse_job
from mindscript.queue.base import QueueJob
from mindscript.result import failure
from mindscript.settings import get_settings
from tasks.queue import get_queue, record_failure

log = logging.getLogger(__name__)
RENDER_DEPLOYMENT = "render_job/render"
# A run's own state hooks write its row back right after the run enters its final state (the completion hook
# after Completed). Settling the row from the state before they had time raced them: a Completed run's row
# went back to pending and the job was rendered twice (the soak, bench/soak.py, saw it). Ingest settles a
# row only when its run has been final this long and the row still says processing.
SETTLE_AFTER_S = 20.0
# Pending means a runner took the run and is starting its process (seconds, a minute on a loaded machine); the
# render marks its row started first thing. A run still Pending after this long, or Running while its row was
# never marked started, lost its worker in between (killed while starting it): no process, no hook and perhaps
# not one heartbeat (the zombie automation needs one) will ever move it, so ingest crashes it and settles the
# row (the soak found such rows stuck in processing).
PENDING_TIMEOUT_S = 180.0


def work_queue_for(priority: int) -> str:
    """Work queue of a row in a work pool (prefect.yaml): high, default or low by its priority."""
    return "high" if priority > 0 else "low" if priority < 0 else "default"


def idempotency_key(row: QueueJob) -> str:
    """One flow run per claim: the attempt number advances with every claim of the row."""
    return f"render-job-{row.id}-{row.attempts}"


@task(name="requeue-expired", cache_policy=NO_CACHE)
def requeue_expired() -> list[str]:
    settings = get_settings()
    rows = get_queue().requeue_expired(backoff_base_s=settings.queue_backoff_base_s,
                                       backoff_max_s=settings.queue_backoff_max_s)
    for row in rows:
        log.warning("job %s: %s -> %s", row.id, row.error, row.status)
    return [str(r.id) for r in rows]


@task(name="reconcile-flow-runs", cache_policy=NO_CACHE)
def reconcile_flow_runs() -> dict[str, str]:
    """Rows still processing whose flow run ended without writing back (SIGKILL, lost hook): settle them.
    A row whose flow run is scheduled (waiting for a runner), being started, or ended less than SETTLE_AFTER_S
    ago (its hooks may be writing the row right now) gets its lease renewed. A run being started for over
    PENDING_TIMEOUT_S lost its worker: it is marked Crashed and its row settled. A started render renews its
    own lease, so its row is not renewed here: if its process died with its worker, the lease runs out and
    ``requeue_expired`` takes the row back (renewing it here kept such rows in processing forever)."""
    from prefect.client.orchestration import get_client

    queue, settings = get_queue(), get_settings()
    settled: dict[str, str] = {}
    rows = [r for r in queue.active() if r.flow_run_id is not None]
    if not rows:
        return settled
    with get_client(sync_client=True) as client:
        for row in rows:
            assert row.flow_run_id is not None
            try:
                state = client.read_flow_run(row.flow_run_id).state
            except Exception as exc:  # an unknown run (server reset): leave it to the lease
                log.warning("job %s: flow run %s unreadable: %s", row.id, row.flow_run_id, exc)
                continue
            starting = state is not None and (state.is_pending() or (state.is_running() and row.stage is None))
            if starting and _age_s(state) > PENDING_TIMEOUT_S:
                why = (f"flow run {row.flow_run_id} was {state.name} for {_age_s(state):.0f} s and its render never "
                       "started: the worker that took it is gone")
                _crash(client, row.flow_run_id, why)
                settled[str(row.id)] = record_failure(row.id, row.attempts, RuntimeError(why)) or "unchanged"
                continue
            if state is not None and state.is_running() and not starting:
                continue  # the render renews its own lease (tasks/queue.py Lease)
            if state is None or not state.is_final() or _age_s(state) < SETTLE_AFTER_S:
                queue.extend_lease(row.id, row.attempts, settings.queue_lease_s)
                continue
            why = f"flow run {row.flow_run_id} ended {state.name} without writing back: {state.message or ''}".strip()
            if state.is_cancelled():
                queue.cancel(row.id, row.attempts, why)
                settled[str(row.id)] = "cancelled"
            else:
                settled[str(row.id)] = record_failure(row.id, row.attempts, RuntimeError(why)) or "unchanged"
    return settled


def _crash(client: Any, flow_run_id: Any, message: str) -> None:
    """Mark an abandoned run Crashed so the UI says what happened (best effort: the row is settled anyway)."""
    from prefect.states import Crashed

    try:
        client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
    except Exception as exc:  # noqa: BLE001 - the API blipped; the fenced row write below is what matters
        log.warning("flow run %s not marked Crashed: %s", flow_run_id, exc)


def _age_s(state: Any) -> float:
    """Seconds since the state was entered (a state without a timestamp counts as old)."""
    at = getattr(state, "timestamp", None)
    return float("inf") if at is None else (datetime.now(UTC) - at).total_seconds()


@task(name="claim-jobs", cache_policy=NO_CACHE)
def claim(max_jobs: int, scope: str = "worker") -> list[QueueJob]:
    """Claim up to the free capacity: ``max_jobs`` minus this worker's active rows (``scope="worker"``, one
    serve.py per machine) or minus every active row (``scope="pool"``: a work pool whose workers share it)."""
    settings = get_settings()
    queue = get_queue()
    free = max_jobs - len(queue.active(None if scope == "pool" else settings.worker_id))
    return queue.claim(settings.worker_id, free, settings.queue_lease_s) if free > 0 else []


@task(name="submit-render", cache_policy=NO_CACHE, task_run_name="submit-{row.id}")
def submit(row: QueueJob, deployment: str = RENDER_DEPLOYMENT) -> str | None:
    """Validate the row's payload and create its render flow run; an invalid payload fails the row."""
    from prefect.deployments import run_deployment

    try:
        job = parse_job(row.job_document())
    except Exception as exc:  # one row's payload must never stop ingest
        if not isinstance(exc, InvalidJob):  # parse_job raises only InvalidJob (fuzzed); keep the row's
            log.exception("job %s: validating its payload raised %s", row.id, type(exc).__name__)
            exc = InvalidJob(f"payload: could not be validated ({type(exc).__name__})", stage="INITIALIZING")
        get_queue().fail(row.id, row.attempts, exc.message, permanent=True, result=failure(exc))
        log.warning("job %s rejected: %s", row.id, exc.message)
        return None
    run = run_deployment(
        deployment, parameters={"job": job.model_dump(mode="json", by_alias=True), "queue_attempt": row.attempts},
        timeout=0, idempotency_key=idempotency_key(row), as_subflow=False,
        work_queue_name=_work_queue(deployment, row.priority), tags=["mindscript", "queue"],
    )
    get_queue().set_flow_run(row.id, row.attempts, run.id)
    return str(run.id)


_pools: dict[str, bool] = {}


def _work_queue(deployment: str, priority: int) -> str | None:
    """Route by priority only for deployments in a work pool (served deployments have no work queues)."""
    if deployment not in _pools:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            _pools[deployment] = bool(client.read_deployment_by_name(deployment).work_pool_name)
    return work_queue_for(priority) if _pools[deployment] else None


def summary(requeued: list[str], settled: dict[str, str], rows: list[QueueJob],
            runs: list[str | None]) -> dict[str, Any]:
    return {"requeued": requeued, "reconciled": settled, "claimed": len(rows),
            "submitted": {str(r.id): run for r, run in zip(rows, runs, strict=True) if run},
            "rejected": [str(r.id) for r, run in zip(rows, runs, strict=True) if run is None]}

