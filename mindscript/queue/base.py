"""The queue's value type and the one ``JobQueue`` protocol every transport implements.

A job is a row of ``public.audio_job_queue`` (supabase/migrations). Every write after the claim is fenced by
``(id, attempt)``: once a row has been requeued and claimed again, the previous attempt's writes are refused
(the method returns False) instead of clobbering the new attempt.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

Status = Literal["pending", "processing", "completed", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = ("pending", "processing", "completed", "failed", "cancelled")


@dataclass(frozen=True)
class Undecodable:
    """A JSON column value the worker cannot decode; validation rejects it like any other wrong type."""

    reason: str

    def __repr__(self) -> str:
        return f"<undecodable JSON: {self.reason}>"


def _parse_int(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:  # past the int-from-string digit limit (4300): float() makes it inf, never raises
        return float(text)


# A valid payload is 4 levels deep (projectData.layers.voice.speed). Deeper structure can only sit in unknown
# fields, and past a few hundred levels it breaks whatever walks it recursively: Python's JSON decoder, and
# Prefect, which walks task inputs (a row is one) and raised RecursionError inside ingest for a 700-deep row.
MAX_PAYLOAD_DEPTH = 32


def nesting_depth(value: Any, limit: int = MAX_PAYLOAD_DEPTH) -> int:
    """How deep lists and dicts nest in ``value`` (0 for a scalar), counted without recursion; stops at
    ``limit + 1``."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def bounded_payload(payload: Any) -> Any:
    """The payload, or an ``Undecodable`` stand-in when it nests deeper than ``MAX_PAYLOAD_DEPTH``."""
    if nesting_depth(payload) > MAX_PAYLOAD_DEPTH:
        return Undecodable(f"nested deeper than {MAX_PAYLOAD_DEPTH} levels")
    return payload


def loads_json(data: str | bytes) -> Any:
    """``json.loads`` for JSON the app wrote. jsonb holds what Python's decoder refuses: integers of more than
    4300 digits (ValueError) and arrays nested ~1000 deep (RecursionError). Decoding a claimed batch must not
    fail on one hostile row, so the first becomes ``inf`` and the second an ``Undecodable`` value: the row's
    validation fails with its field named, and the other rows go on."""
    try:
        return json.loads(data, parse_int=_parse_int)
    except RecursionError:
        return Undecodable("nested too deeply")


def _uuid(value: Any) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    return uuid.UUID(str(value))


def _ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class QueueJob:
    """One queue row. ``id`` is the job id; ``attempts`` is the number of the current (or last) attempt."""

    id: uuid.UUID
    status: Status
    payload: Any
    priority: int = 0
    attempts: int = 0
    max_attempts: int = 3
    user_id: uuid.UUID | None = None
    available_at: datetime | None = None
    progress: float = 0.0
    stage: str | None = None
    message: str | None = None
    result: Any = None
    error: str | None = None
    worker_id: str | None = None
    flow_run_id: uuid.UUID | None = None
    locked_until: datetime | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> QueueJob:
        """From a database row (psycopg dict row) or its JSON form (PostgREST): unknown columns ignored; a
        payload nested deeper than ``MAX_PAYLOAD_DEPTH`` is replaced by an ``Undecodable`` (it fails validation)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in row.items() if k in known}
        for key in ("id", "user_id", "flow_run_id"):
            values[key] = _uuid(values.get(key))
        for key in ("available_at", "locked_until", "created_at", "started_at", "finished_at", "updated_at"):
            values[key] = _ts(values.get(key))
        if values.get("progress") is not None:
            values["progress"] = float(values["progress"])
        values["payload"] = bounded_payload(values.get("payload"))
        return cls(**values)

    @property
    def attempt(self) -> int:
        return self.attempts

    def job_document(self) -> dict[str, Any]:
        """The render job as ``mindscript.job.parse_job`` takes it: the row id is the job id."""
        return {"id": str(self.id), "payload": self.payload}


@runtime_checkable
class JobQueue(Protocol):
    """Claim, track and finish render jobs. Transports: postgres (psycopg), supabase (REST rpc), memory."""

    def enqueue(self, payload: Any, *, priority: int = 0, user_id: uuid.UUID | None = None,
                max_attempts: int = 3, delay_s: float = 0.0) -> QueueJob:
        """Insert a pending job (the app normally inserts rows itself)."""
        ...

    def claim(self, worker_id: str, limit: int, lease_s: int) -> list[QueueJob]:
        """Up to ``limit`` available jobs, highest priority then oldest first, leased for ``lease_s``."""
        ...

    def start(self, job_id: uuid.UUID, attempt: int, *, worker_id: str | None, flow_run_id: uuid.UUID | None,
              lease_s: int) -> bool:
        """The attempt's render began: record who runs it, reset progress, renew the lease."""
        ...

    def set_flow_run(self, job_id: uuid.UUID, attempt: int, flow_run_id: uuid.UUID) -> bool: ...

    def extend_lease(self, job_id: uuid.UUID, attempt: int, lease_s: int) -> bool: ...

    def progress(self, job_id: uuid.UUID, attempt: int, percent: float, stage: str | None,
                 message: str | None) -> bool: ...

    def complete(self, job_id: uuid.UUID, attempt: int, result: Any) -> bool: ...

    def fail(self, job_id: uuid.UUID, attempt: int, error: str, *, permanent: bool, result: Any = None,
             backoff_base_s: float = 10.0, backoff_max_s: float = 600.0) -> Status | None:
        """Permanent: failed now. Transient: pending again after a backoff, until max_attempts is spent.
        Returns the new status, or None when the attempt no longer owns the row."""
        ...

    def cancel(self, job_id: uuid.UUID, attempt: int, message: str) -> bool: ...

    def release(self, job_id: uuid.UUID, attempt: int, message: str) -> bool:
        """Back to pending without spending an attempt (graceful shutdown): max_attempts grows by one."""
        ...

    def requeue_expired(self, *, backoff_base_s: float = 10.0, backoff_max_s: float = 600.0) -> list[QueueJob]:
        """Rows whose lease expired: pending again (with backoff) or failed when out of attempts."""
        ...

    def active(self, worker_id: str | None = None) -> list[QueueJob]:
        """Rows in ``processing`` (of one worker, or all)."""
        ...

    def get(self, job_id: uuid.UUID) -> QueueJob | None: ...

    def stats(self) -> dict[str, Any]:
        """Counts by status, successRate, avgProcessingSeconds, oldestPendingSeconds."""
        ...

    def ping(self) -> bool:
        """True when the queue answers (for /health)."""
        ...

    def close(self) -> None: ...
