"""An in-memory ``JobQueue`` with the same semantics as the SQL functions (for tests and demos).

Shipped beside the real transports, procrastinate style: unit tests of code that uses a queue run against
this twin; tests/integration checks the twin and Postgres agree on the same scenarios.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from mindscript.queue.base import QueueJob, Status


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _backoff(attempts: int, base_s: float, max_s: float) -> timedelta:
    return timedelta(seconds=min(max_s, base_s * 2 ** max(attempts - 1, 0)))


class InMemoryQueue:
    def __init__(self, clock: Callable[[], datetime] = _utcnow) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._rows: dict[uuid.UUID, QueueJob] = {}
        self._seq = 0

    # -- helpers ---------------------------------------------------------------------------------------
    def _update(self, job: QueueJob, **changes: Any) -> QueueJob:
        new = replace(job, updated_at=self._clock(), **changes)
        self._rows[job.id] = new
        return new

    def _owned(self, job_id: uuid.UUID, attempt: int) -> QueueJob | None:
        job = self._rows.get(job_id)
        if job is None or job.status != "processing" or job.attempts != attempt:
            return None
        return job

    def insert(self, job: QueueJob) -> QueueJob:
        """Insert a row as given (tests: the app's direct insert)."""
        with self._lock:
            self._rows[job.id] = job
            return job

    # -- JobQueue --------------------------------------------------------------------------------------
    def enqueue(self, payload: Any, *, priority: int = 0, user_id: uuid.UUID | None = None,
                max_attempts: int = 3, delay_s: float = 0.0) -> QueueJob:
        with self._lock:
            now = self._clock()
            self._seq += 1
            # created_at ties are broken by insertion order, like a database's clock would.
            created = now + timedelta(microseconds=self._seq)
            job = QueueJob(id=uuid.uuid4(), status="pending", payload=payload, priority=priority,
                           max_attempts=max_attempts, user_id=user_id,
                           available_at=now + timedelta(seconds=delay_s), created_at=created, updated_at=now)
            self._rows[job.id] = job
            return job

    def claim(self, worker_id: str, limit: int, lease_s: int) -> list[QueueJob]:
        with self._lock:
            now = self._clock()
            ready = [j for j in self._rows.values()
                     if j.status == "pending" and j.available_at is not None and j.available_at <= now]
            ready.sort(key=lambda j: (-j.priority, j.created_at, str(j.id)))
            return [self._update(j, status="processing", attempts=j.attempts + 1, worker_id=worker_id,
                                 locked_until=now + timedelta(seconds=lease_s), started_at=now, finished_at=None,
                                 flow_run_id=None, progress=0.0, stage=None, message=f"Claimed by {worker_id}")
                    for j in ready[: max(limit, 0)]]

    def start(self, job_id: uuid.UUID, attempt: int, *, worker_id: str | None, flow_run_id: uuid.UUID | None,
              lease_s: int) -> bool:
        with self._lock:
            if (job := self._owned(job_id, attempt)) is None:
                return False
            now = self._clock()
            self._update(job, worker_id=worker_id or job.worker_id, flow_run_id=flow_run_id or job.flow_run_id,
                         started_at=now, locked_until=now + timedelta(seconds=lease_s), progress=0.0,
                         stage="INITIALIZING", message="Render started")
            return True

    def set_flow_run(self, job_id: uuid.UUID, attempt: int, flow_run_id: uuid.UUID) -> bool:
        with self._lock:
            if (job := self._owned(job_id, attempt)) is None:
                return False
            self._update(job, flow_run_id=flow_run_id)
            return True

    def extend_lease(self, job_id: uuid.UUID, attempt: int, lease_s: int) -> bool:
        with self._lock:
            if (job := self._owned(job_id, attempt)) is None:
                return False
            self._update(job, locked_until=self._clock() + timedelta(seconds=lease_s))
            return True

    def progress(self, job_id: uuid.UUID, attempt: int, percent: float, stage: str | None,
                 message: str | None) -> bool:
        with self._lock:
            if (job := self._owned(job_id, attempt)) is None:
                return False
            self._update(job, progress=min(100.0, max(0.0, float(percent))), stage=stage, message=message)
            return True

    def complete(self, job_id: uuid.UUID, attempt: int, result: Any) -> bool:
        with self._lock:
            if (job := self._owned(job_id, attempt)) is None:
                return False
            self._update(job, status="completed", result=result, error=None, progress=100.0, stage="UPLOADING",
                         message="Render complete", finished_at=self._clock(), locked_until=None)
            return True

    def fail(self, job_id: uuid.UUID, attempt: int, error: str, *, permanent: bool, result: Any = None,
             backoff_base_s: float = 10.0, backoff_max_s: float = 600.0) -> Status | None:
        with self._lock:
            if (job := self._owned(job_id, attempt)) is None:
                return None
            now = self._clock()
            if permanent or job.attempts >= job.max_attempts:
                self._update(job, status="failed", error=error, message=error, result=result, finished_at=now,
                             locked_until=None)
                return "failed"
            self._update(job, status="pending", error=error, message=error, result=None, finished_at=None,
                         locked_until=None, worker_id=None, progress=0.0, stage=None,
                         available_at=now + _backoff(job.attempts, backoff_base_s, backoff_max_s))
            return "pending"

    def cancel(self, job_id: uuid.UUID, attempt: int, message: str) -> bool:
        with self._lock:
            if (job := self._owned(job_id, attempt)) is None:
                return False
            self._update(job, status="cancelled", message=message, error=message, finished_at=self._clock(),
                         locked_until=None)
            return True

    def release(self, job_id: uuid.UUID, attempt: int, message: str) -> bool:
        with self._lock:
            if (job := self._owned(job_id, attempt)) is None:
                return False
            self._update(job, status="pending", max_attempts=job.max_attempts + 1, available_at=self._clock(),
                         worker_id=None, flow_run_id=None, locked_until=None, started_at=None, progress=0.0,
                         stage=None, message=message)
            return True

    def requeue_expired(self, *, backoff_base_s: float = 10.0, backoff_max_s: float = 600.0) -> list[QueueJob]:
        with self._lock:
            now = self._clock()
            out = []
            for job in list(self._rows.values()):
                if job.status != "processing" or job.locked_until is None or job.locked_until >= now:
                    continue
                why = f"lease expired on worker {job.worker_id or '?'} (attempt {job.attempts})"
                if job.attempts >= job.max_attempts:
                    out.append(self._update(job, status="failed", error=why, message=why, finished_at=now,
                                            locked_until=None))
                else:
                    out.append(self._update(job, status="pending", error=why, message=why, finished_at=None,
                                            locked_until=None, progress=0.0, stage=None,
                                            available_at=now + _backoff(job.attempts, backoff_base_s, backoff_max_s)))
            return out

    def active(self, worker_id: str | None = None) -> list[QueueJob]:
        with self._lock:
            rows = [j for j in self._rows.values()
                    if j.status == "processing" and (worker_id is None or j.worker_id == worker_id)]
            return sorted(rows, key=lambda j: j.started_at or self._clock())

    def get(self, job_id: uuid.UUID) -> QueueJob | None:
        with self._lock:
            return self._rows.get(job_id)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            rows = list(self._rows.values())
            now = self._clock()
        count = {s: sum(1 for j in rows if j.status == s)
                 for s in ("pending", "processing", "completed", "failed", "cancelled")}
        finished = count["completed"] + count["failed"]
        durations = [(j.finished_at - j.started_at).total_seconds() for j in rows
                     if j.status == "completed" and j.finished_at and j.started_at]
        pending = [j.created_at for j in rows if j.status == "pending" and j.created_at]
        return {
            "total": len(rows), **count,
            "successRate": round(count["completed"] / finished, 4) if finished else None,
            "avgProcessingSeconds": round(sum(durations) / len(durations), 3) if durations else None,
            "oldestPendingSeconds": round((now - min(pending)).total_seconds(), 3) if pending else None,
        }

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        return None
