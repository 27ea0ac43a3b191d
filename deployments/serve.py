"""One worker process: serves the render and ingest deployments, /health and /stats, and stops gracefully.

``python deployments/serve.py`` (the seed's ``npm run worker``). With no queue configured it starts the
embedded Postgres first (children inherit its DATABASE_URL). Signals: SIGTERM/SIGINT stop claiming, let
active renders finish for up to SHUTDOWN_GRACE ms, give back (release) what did not finish, exit 0.
Prefect's own serve() would cancel in-flight runs and pause the deployments (for every worker): the runner's
SIGTERM handler is replaced here for that reason.
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


class WorkerState:
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.started = time.monotonic()
        self.status = "starting"

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
                 "uptime": state.uptime()}


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

    from flows.ingest import ingest_queue
    from flows.render import render_job
    from mindscript.settings import get_settings
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

    runner = Runner(name=settings.worker_id, limit=settings.max_jobs + 1, pause_on_shutdown=False)
    await runner.aadd_deployment(await render_job.ato_deployment(name="render"))
    await runner.aadd_deployment(await ingest_queue.ato_deployment(
        name="ingest", interval=settings.poll_interval / 1000, parameters={"max_jobs": settings.max_jobs},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)))
    runner_task = asyncio.create_task(runner.start())
    while not runner.started and not runner_task.done():
        await asyncio.sleep(0.05)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # replaces the runner's cancel-everything SIGTERM handler
    state.status = "running"
    log.info("worker %s serving (max %s jobs, health on :%s)", settings.worker_id, settings.max_jobs,
             settings.health_port)

    idle_since = time.monotonic()
    while not stop.is_set() and not runner_task.done():
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass
        if settings.idle_timeout > 0:
            busy = await asyncio.to_thread(lambda: bool(queue.active(settings.worker_id)) or
                                           bool(queue.stats().get("pending")))
            idle_since = time.monotonic() if busy else idle_since
            if time.monotonic() - idle_since >= settings.idle_timeout / 1000:
                log.info("idle for %s ms: stopping", settings.idle_timeout)
                stop.set()

    state.status = "stopping"
    runner.stopping = True  # no new flow runs are picked up (ingest included): nothing more is claimed
    await asyncio.to_thread(_drain, queue, settings.worker_id, settings.shutdown_grace / 1000)
    try:
        await runner.astop()  # cancels what is left; those rows were released, so their hooks are fenced out
    except RuntimeError:
        pass
    runner_task.cancel()
    try:
        await runner_task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
        pass
    health.shutdown()
    queue.close()
    return 0


def _drain(queue: Any, worker_id: str, grace_s: float) -> None:
    """Release claimed rows not started yet; wait for started ones up to the grace; release the rest."""
    deadline = time.monotonic() + grace_s
    while True:
        rows = queue.active(worker_id)
        for row in rows:
            if row.stage is None or time.monotonic() >= deadline:
                queue.release(row.id, row.attempts, f"worker {worker_id} shut down; requeued")
        if not rows or time.monotonic() >= deadline:
            return
        time.sleep(0.5)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
