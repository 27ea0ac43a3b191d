"""The queue over a direct Postgres connection (psycopg 3 with a connection pool).

SQL comes from ``queries.sql`` (one block per method); psycopg errors are translated here: a lost or refused
connection is ``QueueUnavailable`` (transient), anything else ``QueueError``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from mindscript.errors import QueueError, QueueUnavailable
from mindscript.queue.base import QueueJob, Status, loads_json
from mindscript.queue.sql import QUERIES


@contextlib.contextmanager
def wrap_exceptions() -> Iterator[None]:
    import psycopg
    import psycopg_pool

    try:
        yield
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
        raise QueueUnavailable(f"queue database unavailable: {type(exc).__name__}: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise QueueError(f"queue query failed: {type(exc).__name__}: {_first_line(exc)}") from exc


def _configure(conn: Any) -> None:
    """Decode json/jsonb columns with ``loads_json``: one hostile payload must not fail a whole claim."""
    from psycopg.types.json import set_json_loads

    set_json_loads(loads_json, conn)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


class PostgresQueue:
    """``JobQueue`` on Postgres. ``dsn`` is a libpq URL (its password never appears in errors or repr)."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 4, timeout_s: float = 10.0) -> None:
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        with wrap_exceptions():
            self._pool = ConnectionPool(
                dsn, min_size=min_size, max_size=max_size, timeout=timeout_s, open=False,
                kwargs={"autocommit": True, "row_factory": dict_row}, name="mindscript-queue",
                configure=_configure,
            )
            self._pool.open(wait=False)

    def __repr__(self) -> str:
        return "PostgresQueue(<dsn hidden>)"

    # -- plumbing --------------------------------------------------------------------------------------
    def _rows(self, name: str, **params: Any) -> list[dict[str, Any]]:
        with wrap_exceptions(), self._pool.connection() as conn:
            return conn.execute(QUERIES[name], params).fetchall()

    def _value(self, name: str, **params: Any) -> Any:
        rows = self._rows(name, **params)
        return next(iter(rows[0].values())) if rows else None

    @staticmethod
    def _json(value: Any) -> Any:
        from psycopg.types.json import Jsonb

        return None if value is None else Jsonb(value)

    # -- JobQueue --------------------------------------------------------------------------------------
    def enqueue(self, payload: Any, *, priority: int = 0, user_id: uuid.UUID | None = None,
                max_attempts: int = 3, delay_s: float = 0.0) -> QueueJob:
        rows = self._rows("enqueue", payload=self._json(payload), priority=priority, user_id=user_id,
                          max_attempts=max_attempts, delay_seconds=delay_s)
        return QueueJob.from_row(rows[0])

    def claim(self, worker_id: str, limit: int, lease_s: int) -> list[QueueJob]:
        if limit <= 0:
            return []
        rows = self._rows("claim", worker_id=worker_id, limit=limit, lease_seconds=lease_s)
        jobs = [QueueJob.from_row(r) for r in rows]
        return sorted(jobs, key=lambda j: (-j.priority, j.created_at, str(j.id)))

    def start(self, job_id: uuid.UUID, attempt: int, *, worker_id: str | None, flow_run_id: uuid.UUID | None,
              lease_s: int) -> bool:
        return bool(self._value("start", id=job_id, attempt=attempt, worker_id=worker_id, flow_run_id=flow_run_id,
                                lease_seconds=lease_s))

    def set_flow_run(self, job_id: uuid.UUID, attempt: int, flow_run_id: uuid.UUID) -> bool:
        return bool(self._value("set_flow_run", id=job_id, attempt=attempt, flow_run_id=flow_run_id))

    def extend_lease(self, job_id: uuid.UUID, attempt: int, lease_s: int) -> bool:
        return bool(self._value("extend_lease", id=job_id, attempt=attempt, lease_seconds=lease_s))

    def progress(self, job_id: uuid.UUID, attempt: int, percent: float, stage: str | None,
                 message: str | None) -> bool:
        return bool(self._value("progress", id=job_id, attempt=attempt, progress=float(percent), stage=stage,
                                message=message))

    def complete(self, job_id: uuid.UUID, attempt: int, result: Any) -> bool:
        return bool(self._value("complete", id=job_id, attempt=attempt, result=self._json(result)))

    def fail(self, job_id: uuid.UUID, attempt: int, error: str, *, permanent: bool, result: Any = None,
             backoff_base_s: float = 10.0, backoff_max_s: float = 600.0) -> Status | None:
        return self._value("fail", id=job_id, attempt=attempt, error=error, permanent=permanent,
                           result=self._json(result), backoff_base_seconds=float(backoff_base_s),
                           backoff_max_seconds=float(backoff_max_s))

    def cancel(self, job_id: uuid.UUID, attempt: int, message: str) -> bool:
        return bool(self._value("cancel", id=job_id, attempt=attempt, message=message))

    def release(self, job_id: uuid.UUID, attempt: int, message: str) -> bool:
        return bool(self._value("release", id=job_id, attempt=attempt, message=message))

    def requeue_expired(self, *, backoff_base_s: float = 10.0, backoff_max_s: float = 600.0) -> list[QueueJob]:
        rows = self._rows("requeue_expired", backoff_base_seconds=float(backoff_base_s),
                          backoff_max_seconds=float(backoff_max_s))
        return [QueueJob.from_row(r) for r in rows]

    def active(self, worker_id: str | None = None) -> list[QueueJob]:
        return [QueueJob.from_row(r) for r in self._rows("active", worker_id=worker_id)]

    def get(self, job_id: uuid.UUID) -> QueueJob | None:
        rows = self._rows("get", id=job_id)
        return QueueJob.from_row(rows[0]) if rows else None

    def stats(self) -> dict[str, Any]:
        return _plain(self._value("stats"))

    def ping(self) -> bool:
        try:
            return self._value("ping") == 1
        except QueueUnavailable:
            return False

    def close(self) -> None:
        self._pool.close()


def _plain(stats: dict[str, Any]) -> dict[str, Any]:
    """jsonb numerics arrive as int/float already; keep the dict JSON-friendly either way."""
    return {k: (float(v) if v is not None and not isinstance(v, int | float) else v) for k, v in stats.items()}
