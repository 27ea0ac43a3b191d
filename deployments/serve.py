"""One worker process: serves the render and ingest deployments, ingests, serves /health and /stats.

``python deployments/serve.py`` (the seed's ``npm run worker``). With no queue configured it starts the
embedded Postgres first (children inherit its DATABASE_URL). Every POLL_INTERVAL ms this process runs the
``ingest_queue`` flow in-process (one at a time): claimed rows become render flow runs that the runner starts
as child processes. The ingest deployment is served without a schedule (trigger it by hand if you like):
a scheduled ingest run would cost a Python process per poll and, once late, would sort ahead of the renders
for the runner's slots (the "scheduled runs skipped (at capacity)" starvation). With a work pool
(prefect.yaml) the schedule lives on the deployment instead.
Signals: SIGTERM/SIGINT stop claiming, release claimed rows not started yet, let active renders finish for up
to SHUTDOWN_GRACE ms, give back (release) what did not finish, exit 0. Prefect's own serve() would cancel
in-flight runs and pause the deployments (for every worker): the runner's SIGTERM handler is replaced here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))


log = logging.getLogger("mindscript.worker")
_FINISH_S = 15.0  # shutdown: how long finished renders get to report their final state before the runner stops


class WorkerState:
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.started = time.monotonic()
        self.status = "starting"
        self.pool: Any = None  # deployments.warm.WarmPool when warm processes are on

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)


def _health(state: WorkerState) -> tuple[int, dict[str, Any]]:
    from tasks.queue import get_queue

    queue = get_queue()
    connected = queue.ping()
    active = len(queue.active(state.worker_id)) if connected else None
    ok = connected and state.status == "running"
    return (200 if ok else 503), {"status": "healthy" if ok else state.status if connected else "unhealthy",
                                  "workerId": state.worker_id, "uptime": state.uptime(), "activeJobs": active,
                                  "queue": {"connected": connected}}


def _stats(state: WorkerState) -> tuple[int, dict[str, Any]]:
    from tasks.queue import get_queue

    queue = get_queue()
    s = queue.stats()
    finished = (s.get("completed") or 0) + (s.get("failed") or 0)
    return 200, {"workerId": state.worker_id, "totalJobs": s.get("total"), "successful": s.get("completed"),
                 "failed": s.get("failed"), "successRate": s.get("successRate"),
                 "averageProcessingTime": s.get("avgProcessingSeconds"),
                 "currentlyProcessing": len(queue.active(state.worker_id)), "pending": s.get("pending"),
                 "finished": finished, "oldestPendingSeconds": s.get("oldestPendingSeconds"),
                 "uptime": state.uptime(),
                 # which process renders which flow run (kill one by hand, or find it in `ps`)
                 "renders": [{"flowRunId": run_id, "pid": pid}
                             for run_id, pid in (state.pool.running() if state.pool else {}).items()]}


def start_health_server(state: WorkerState, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            route = {"/health": _health, "/stats": _stats}.get(self.path.split("?")[0])
            try:
                status, body = route(state) if route else (404, {"error": f"no route {self.path!r}"})
            except Exception as exc:  # the queue is down: say so instead of hanging up
                status, body = 503, {"status": "unhealthy", "error": f"{type(exc).__name__}: {exc}"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


async def serve() -> int:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.runner import Runner

    from deployments import warm
    from flows.ingest import ingest_queue
    from flows.render import render_job
    from mindscript.settings import get_settings
    from tasks.ingest import RENDER_DEPLOYMENT
    from tasks.queue import get_queue

    # flow run processes load flows/*.py by path: they need the project root importable (tasks, flows)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    settings = get_settings()
    if not settings.queue_dsn and not (settings.supabase_url and settings.supabase_service_key):
        from mindscript.queue.embedded import embedded_dsn

        os.environ["DATABASE_URL"] = embedded_dsn(settings.embedded_pg_dir)  # render processes inherit it
        get_settings.cache_clear()
        settings = get_settings()
    state = WorkerState(settings.worker_id)
    queue = get_queue()
    health = start_health_server(state, settings.health_port)

    # Renders are bounded by the claim (MAX_JOBS rows per worker); the extra slot is for a manually triggered
    # ingest run. The ingest deployment is served without a schedule: this process ingests in-process every
    # POLL_INTERVAL (see _ingest_loop), so ingest runs never queue up in front of renders for runner slots.
    # The runner polls Prefect every second (its default, 10 s, was most of a short render's overhead) for runs
    # started from the UI or run_deployment; runs this process submits are picked up at once (poll_now below).
    runner = Runner(name=settings.worker_id, limit=settings.max_jobs + 1, pause_on_shutdown=False,
                    query_seconds=1.0)
    # Served as an in-memory flow, its runs start through run_flow_in_subprocess, which the warm pool feeds
    # with interpreters that have already imported the render (see deployments/warm.py).
    await runner.aadd_flow(render_job, name="render")
    pool = state.pool = warm.install(settings.max_jobs) if settings.warm_processes else None
    ingest_id = await runner.aadd_deployment(await ingest_queue.ato_deployment(
        name="ingest", parameters={"max_jobs": settings.max_jobs},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)))
    await _drop_schedules(ingest_id)
    # the TTS providers' global concurrency limits exist (sized from settings) before the first render needs them
    from tasks.voice import GLOBAL_LIMIT_PROVIDERS, ensure_provider_limit

    for provider in GLOBAL_LIMIT_PROVIDERS:
        await asyncio.to_thread(ensure_provider_limit, settings, provider)
    runner_task = asyncio.create_task(runner.start())
    while not runner.started and not runner_task.done():
        await asyncio.sleep(0.05)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # replaces the runner's cancel-everything SIGTERM handler
    state.status = "running"
    log.info("worker %s serving (max %s jobs, poll %s ms, health on :%s)", settings.worker_id, settings.max_jobs,
             settings.poll_interval, settings.health_port)

    def ingest_once() -> bool:
        """One ingest; True when it created flow runs for this runner to start."""
        try:
            out = ingest_queue(max_jobs=settings.max_jobs, deployment=RENDER_DEPLOYMENT)
        except Exception as exc:  # noqa: BLE001 - the Prefect API or the queue blipped: next poll retries
            log.warning("ingest failed: %s: %s", type(exc).__name__, exc)
            return False
        if out.get("claimed") or out.get("requeued") or out.get("reconciled"):
            log.info("ingest: %s", out)
        return bool(out.get("submitted"))

    async def poll_now() -> None:
        poll = getattr(runner, "_get_and_submit_flow_runs", None)  # Prefect 3's runner; else its own poll
        if poll is not None:
            try:
                await poll()
            except Exception as exc:  # noqa: BLE001 - the runner's regular poll picks the runs up anyway
                log.debug("immediate runner poll failed: %s", exc)

    idle_since = time.monotonic()
    while not stop.is_set() and not runner_task.done():
        if await asyncio.to_thread(ingest_once):
            await poll_now()
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.poll_interval / 1000)
        except TimeoutError:
            pass
        if settings.idle_timeout > 0 and not stop.is_set():
            busy = await asyncio.to_thread(lambda: bool(queue.active(settings.worker_id)) or
                                           bool(queue.stats().get("pending")))
            idle_since = time.monotonic() if busy else idle_since
            if time.monotonic() - idle_since >= settings.idle_timeout / 1000:
                log.info("idle for %s ms: stopping", settings.idle_timeout)
                stop.set()

    state.status = "stopping"
    log.info("stopping: no more claims; waiting up to %s ms for active renders", settings.shutdown_grace)
    # no new flow runs are picked up from here on (the runner's poller checks its own flag)
    runner.stopping = True
    poller = getattr(runner, "_scheduled_run_poller", None)
    if poller is not None:
        poller.stopping = True
    released = await asyncio.to_thread(_drain, queue, settings.worker_id, settings.shutdown_grace / 1000)
    await _cancel_flow_runs(released)
    # A render that has written its row may still be reporting its final state to Prefect: let those processes
    # exit (bounded) before the runner stops, or their runs show "Cancelled: Runner is shutting down".
    given_back = {str(row.flow_run_id) for row in released if getattr(row, "flow_run_id", None)}
    finishing_until = time.monotonic() + _FINISH_S
    while state.pool is not None and time.monotonic() < finishing_until and \
            any(run_id not in given_back for run_id in state.pool.running()):
        await asyncio.sleep(0.2)
    try:
        await runner.astop()  # kills what is left; those rows were released, so their hooks are fenced out
    except RuntimeError:
        pass
    runner_task.cancel()
    try:
        await runner_task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
        pass
    warm.uninstall(pool)
    health.shutdown()
    queue.close()
    log.info("worker %s stopped (%s job(s) given back to the queue)", settings.worker_id, len(released))
    return 0


def _drain(queue: Any, worker_id: str, grace_s: float) -> list[Any]:
    """Release claimed rows not started yet; wait for started ones up to the grace; release the rest.
    Returns the released rows."""
    deadline = time.monotonic() + grace_s
    released: list[Any] = []
    while True:
        rows = queue.active(worker_id)
        for row in rows:
            if row.stage is None or time.monotonic() >= deadline:
                if queue.release(row.id, row.attempts, f"worker {worker_id} shut down; requeued"):
                    released.append(row)
        rows = queue.active(worker_id)
        if not rows or time.monotonic() >= deadline:
            return released
        time.sleep(0.25)


async def _drop_schedules(deployment_id: Any) -> None:
    """Prefect keeps a redeployed deployment's old schedules: a served ingest must have none (see above)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async with get_client() as client:
        schedules = await client.read_deployment_schedules(deployment_id)
        for schedule in schedules:
            await client.delete_deployment_schedule(deployment_id, schedule.id)
            log.info("removed schedule %s of the ingest deployment (this worker ingests in-process)", schedule.id)
        # runs an earlier schedule created would still start (late ones first): drop them too
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED]))))
        stale = [run for run in runs if run.auto_scheduled]
        for run in stale:
            await client.delete_flow_run(run.id)
        if stale:
            log.info("removed %s scheduled ingest run(s) left by an earlier schedule", len(stale))


async def _cancel_flow_runs(rows: list[Any]) -> None:
    """The flow runs of released rows will never do their work: mark them Cancelled (they are fenced anyway)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    if not rows:
        return
    async with get_client() as client:
        for row in rows:
            if row.flow_run_id is None:
                continue
            try:
                run = await client.read_flow_run(row.flow_run_id)
                if run.state is None or not run.state.is_final():
                    await client.set_flow_run_state(row.flow_run_id, Cancelled(message="job requeued: worker stopped"),
                                                    force=True)
            except Exception as exc:  # noqa: BLE001 - best effort; the row is already back in the queue
                log.warning("flow run %s of job %s not cancelled: %s", row.flow_run_id, row.id, exc)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
