"""Queue awareness of the render flow: the row's progress sink, its lease keeper and the state hooks.

A render started from the queue gets ``queue_attempt`` (the row's attempt number); the job id is the row id.
Every write is fenced by (id, attempt) in SQL, so hooks are idempotent and a superseded attempt cannot touch
the row. Hooks are not the only path: a SIGKILLed process runs none, and ``flows/ingest.py`` reconciles rows
from the flow run's state.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from mindscript.errors import Cancelled, PermanentError, RenderError
from mindscript.progress import ProgressEvent, ProgressSink, throttled
from mindscript.queue.base import JobQueue
from mindscript.result import failure
from mindscript.services import build_queue
from mindscript.settings import get_settings

log = logging.getLogger(__name__)
_queue: JobQueue | None = None
_lock = threading.Lock()


def get_queue() -> JobQueue:
    """This process's queue (built once from settings; the Postgres transport holds a pool)."""
    global _queue
    with _lock:
        if _queue is None:
            _queue = build_queue(get_settings())
        return _queue


def reset_queue() -> None:
    """Forget the process's queue (tests that change the environment)."""
    global _queue
    with _lock:
        if _queue is not None:
            _queue.close()
        _queue = None


def row_sinks(job_id: str, attempt: int | None) -> list[ProgressSink]:
    """The queue row's progress sink (throttled to QUEUE_PROGRESS_INTERVAL_S), or none outside the queue."""
    if attempt is None:
        return []
    row_id, queue = uuid.UUID(job_id), get_queue()

    def sink(event: ProgressEvent) -> None:
        if event.kind in ("completed", "failed"):
            return  # the hooks write the final state, with the result
        queue.progress(row_id, attempt, event.percent, event.stage.value, event.message)

    return [throttled(sink, get_settings().queue_progress_interval_s)]


class Lease:
    """Marks the row started and renews its lease every third of QUEUE_LEASE_S until ``stop()``."""

    def __init__(self, job_id: str | None = None, attempt: int | None = None,
                 flow_run_id: uuid.UUID | None = None) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if job_id is None or attempt is None:
            return
        settings = get_settings()
        self.row_id, self.attempt, self.lease_s = uuid.UUID(job_id), attempt, settings.queue_lease_s
        queue = get_queue()
        if not queue.start(self.row_id, attempt, worker_id=settings.worker_id, flow_run_id=flow_run_id,
                           lease_s=self.lease_s):
            raise Cancelled(f"queue row {job_id!r} attempt {attempt} is no longer held by this run "
                            "(requeued or finished elsewhere)", stage="INITIALIZING")
        self._thread = threading.Thread(target=self._renew, name=f"lease-{job_id}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        queue = get_queue()
        while not self._stop.wait(max(1.0, self.lease_s / 3)):
            try:
                if not queue.extend_lease(self.row_id, self.attempt, self.lease_s):
                    log.warning("lease of job %s attempt %s was lost", self.row_id, self.attempt)
                    return
            except RenderError as exc:  # a blip in the queue must not fail the render; the next renewal retries
                log.warning("lease renewal of job %s failed: %s", self.row_id, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def begin(job_id: str, attempt: int | None) -> Lease:
    """Mark the row started by this flow run and keep its lease (a no-op outside the queue)."""
    if attempt is None:
        return Lease()
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return Lease(job_id, attempt, uuid.UUID(run_id) if run_id else None)


# -- state hooks (flow, flow_run, state) ---------------------------------------------------------------------
def _row(flow_run: Any) -> tuple[uuid.UUID, int] | None:
    params = flow_run.parameters or {}
    attempt = params.get("queue_attempt")
    job = params.get("job")
    job_id = job.get("id") if isinstance(job, dict) else getattr(job, "id", None)
    if attempt is None or job_id is None:
        return None
    try:
        return uuid.UUID(str(job_id)), int(attempt)
    except ValueError:
        return None


def on_completion(flow: Any, flow_run: Any, state: Any) -> None:
    if (row := _row(flow_run)) is None:
        return
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        result = {"success": True, "data": None}
    applied = get_queue().complete(row[0], row[1], result)
    log.info("job %s attempt %s completed (row written: %s)", row[0], row[1], applied)


def on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    if (row := _row(flow_run)) is None:
        return
    exc = state.result(raise_on_failure=False)
    if not isinstance(exc, BaseException):
        exc = RuntimeError(state.message or "flow run failed")
    record_failure(row[0], row[1], exc)


def on_crashed(flow: Any, flow_run: Any, state: Any) -> None:
    if (row := _row(flow_run)) is None:
        return
    record_failure(row[0], row[1], RuntimeError(f"render process crashed: {state.message or state.name}"))


def on_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    if (row := _row(flow_run)) is None:
        return
    get_queue().cancel(row[0], row[1], f"flow run cancelled: {state.message or state.name}")


def record_failure(row_id: uuid.UUID, attempt: int, exc: BaseException) -> str | None:
    """Write a failed attempt: permanent errors fail the row now, others retry with backoff."""
    settings = get_settings()
    permanent = isinstance(exc, PermanentError)
    message = exc.message if isinstance(exc, RenderError) else f"{type(exc).__name__}: {exc}"
    status = get_queue().fail(row_id, attempt, message, permanent=permanent, result=failure(exc),
                              backoff_base_s=settings.queue_backoff_base_s, backoff_max_s=settings.queue_backoff_max_s)
    log.info("job %s attempt %s failed (%s): %s", row_id, attempt, status, message)
    return status


HOOKS: dict[str, list[Any]] = {"on_completion": [on_completion], "on_failure": [on_failure],
                               "on_crashed": [on_crashed], "on_cancellation": [on_cancellation]}
