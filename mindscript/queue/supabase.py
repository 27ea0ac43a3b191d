"""The queue over Supabase's REST API: supabase-py ``rpc`` calls to the same SQL functions.

For deployments that have a project URL and service key but no database credentials. The SDK is imported
here only, lazily; its errors are translated: transport failures and 5xx are ``QueueUnavailable``, other
PostgREST errors ``QueueError``. The service key never appears in messages or repr.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from mindscript.errors import QueueError, QueueUnavailable
from mindscript.queue.base import QueueJob, Status, loads_json


@contextlib.contextmanager
def wrap_exceptions(function: str) -> Iterator[None]:
    import httpx
    from postgrest.exceptions import APIError

    try:
        yield
    except APIError as exc:
        code = str(exc.code or "")
        text = f"queue rpc {function!r} failed: {exc.message or exc}" + (f" (code {code})" if code else "")
        if code.startswith("5") or code in ("PGRST000", "PGRST001", "PGRST002"):
            raise QueueUnavailable(text) from exc
        raise QueueError(text) from exc
    except httpx.HTTPError as exc:
        raise QueueUnavailable(f"queue rpc {function!r} failed: {type(exc).__name__}: {exc}") from exc


# The row functions' columns, the payload as its jsonb text (PostgREST's ``select`` with a cast): the body is then
# flat JSON whatever the app wrote, and the payload is decoded here, one row at a time, by ``loads_json`` (a
# payload nested ~1000 deep would otherwise break postgrest-py's decoding of the whole claimed batch).
ROW_COLUMNS = ",".join(f"{f.name}::text" if f.name == "payload" else f.name for f in fields(QueueJob))


def _s(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


class SupabaseQueue:
    """``JobQueue`` through PostgREST's ``/rest/v1/rpc/<function>`` endpoints, as the service role."""

    def __init__(self, url: str, service_key: str, *, timeout_s: float = 30.0) -> None:
        import httpx

        from supabase import ClientOptions, create_client

        self._url = url
        # No client-side retries: a claim is not idempotent (a retried one could lease rows twice).
        self._http = httpx.Client(timeout=timeout_s)
        options = ClientOptions(httpx_client=self._http, postgrest_client_retry=False,
                                auto_refresh_token=False, persist_session=False)
        self._client = create_client(url, service_key, options=options)

    def __repr__(self) -> str:
        return f"SupabaseQueue({self._url!r}, <service key hidden>)"

    def _rpc(self, function: str, *, select: str | None = None, **params: Any) -> Any:
        with wrap_exceptions(function):
            call = self._client.rpc(function, params)
            try:
                return (call.select(select) if select else call).execute().data
            except RecursionError as exc:  # a body nested ~1000 deep (never a row read: its payload is text)
                raise QueueError(f"queue rpc {function!r} returned JSON nested too deeply to decode") from exc

    def _rows(self, function: str, **params: Any) -> list[QueueJob]:
        data = self._rpc(function, select=ROW_COLUMNS, **params) or []
        if isinstance(data, str):  # postgrest-py hands back the text when json.loads raised ValueError
            data = loads_json(data)
        if isinstance(data, dict):
            data = [data]
        rows = []
        for row in data:
            if isinstance(row.get("payload"), str):
                row = {**row, "payload": loads_json(row["payload"])}
            rows.append(QueueJob.from_row(row))
        return rows

    def enqueue(self, payload: Any, *, priority: int = 0, user_id: uuid.UUID | None = None,
                max_attempts: int = 3, delay_s: float = 0.0) -> QueueJob:
        return self._rows("audio_job_enqueue", p_payload=payload, p_priority=priority, p_user_id=_s(user_id),
                          p_max_attempts=max_attempts, p_delay_seconds=delay_s)[0]

    def claim(self, worker_id: str, limit: int, lease_s: int) -> list[QueueJob]:
        if limit <= 0:
            return []
        jobs = self._rows("audio_job_claim", p_worker_id=worker_id, p_limit=limit, p_lease_seconds=lease_s)
        return sorted(jobs, key=lambda j: (-j.priority, j.created_at, str(j.id)))

    def start(self, job_id: uuid.UUID, attempt: int, *, worker_id: str | None, flow_run_id: uuid.UUID | None,
              lease_s: int) -> bool:
        return bool(self._rpc("audio_job_start", p_id=str(job_id), p_attempt=attempt, p_worker_id=worker_id,
                              p_flow_run_id=_s(flow_run_id), p_lease_seconds=lease_s))

    def set_flow_run(self, job_id: uuid.UUID, attempt: int, flow_run_id: uuid.UUID) -> bool:
        return bool(self._rpc("audio_job_set_flow_run", p_id=str(job_id), p_attempt=attempt,
                              p_flow_run_id=str(flow_run_id)))

    def extend_lease(self, job_id: uuid.UUID, attempt: int, lease_s: int) -> bool:
        return bool(self._rpc("audio_job_extend_lease", p_id=str(job_id), p_attempt=attempt,
                              p_lease_seconds=lease_s))

    def progress(self, job_id: uuid.UUID, attempt: int, percent: float, stage: str | None,
                 message: str | None) -> bool:
        return bool(self._rpc("audio_job_progress", p_id=str(job_id), p_attempt=attempt, p_progress=float(percent),
                              p_stage=stage, p_message=message))

    def complete(self, job_id: uuid.UUID, attempt: int, result: Any) -> bool:
        return bool(self._rpc("audio_job_complete", p_id=str(job_id), p_attempt=attempt, p_result=result))

    def fail(self, job_id: uuid.UUID, attempt: int, error: str, *, permanent: bool, result: Any = None,
             backoff_base_s: float = 10.0, backoff_max_s: float = 600.0) -> Status | None:
        return self._rpc("audio_job_fail", p_id=str(job_id), p_attempt=attempt, p_error=error, p_permanent=permanent,
                         p_result=result, p_backoff_base_seconds=backoff_base_s,
                         p_backoff_max_seconds=backoff_max_s)

    def cancel(self, job_id: uuid.UUID, attempt: int, message: str) -> bool:
        return bool(self._rpc("audio_job_cancel", p_id=str(job_id), p_attempt=attempt, p_message=message))

    def release(self, job_id: uuid.UUID, attempt: int, message: str) -> bool:
        return bool(self._rpc("audio_job_release", p_id=str(job_id), p_attempt=attempt, p_message=message))

    def requeue_expired(self, *, backoff_base_s: float = 10.0, backoff_max_s: float = 600.0) -> list[QueueJob]:
        return self._rows("audio_job_requeue_expired", p_backoff_base_seconds=backoff_base_s,
                          p_backoff_max_seconds=backoff_max_s)

    def active(self, worker_id: str | None = None) -> list[QueueJob]:
        return self._rows("audio_job_active", p_worker_id=worker_id)

    def get(self, job_id: uuid.UUID) -> QueueJob | None:
        rows = self._rows("audio_job_get", p_id=str(job_id))
        return rows[0] if rows else None

    def stats(self) -> dict[str, Any]:
        return dict(self._rpc("audio_job_stats") or {})

    def ping(self) -> bool:
        try:
            self._rpc("audio_job_stats")
            return True
        except (QueueUnavailable, QueueError):
            return False

    def close(self) -> None:
        self._http.close()
