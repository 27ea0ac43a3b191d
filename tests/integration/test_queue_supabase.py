"""The Supabase REST transport: supabase-py ``rpc`` against a local server speaking PostgREST's RPC format.

The server (tests/servers/postgrest.py) implements ``POST /rest/v1/rpc/<function>`` as PostgREST does and forwards
to the real SQL functions of the migrated test database, under the role the API key names.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mindscript.errors import QueueError, QueueUnavailable
from mindscript.queue.supabase import SupabaseQueue
from mindscript.services import build_queue
from mindscript.settings import Settings
from tests.servers.postgrest import ANON_KEY, SERVICE_KEY, PostgrestRpcServer

PAYLOAD = {"type": "render", "projectData": {"scriptText": "Rest.", "durationMin": 0.5}}


@pytest.fixture
def rest(pg_dsn: str) -> Iterator[PostgrestRpcServer]:
    with PostgrestRpcServer(pg_dsn) as server:
        yield server


def test_rest_transport_runs_a_job_through_the_real_sql_functions(rest: PostgrestRpcServer) -> None:
    queue = SupabaseQueue(rest.url, SERVICE_KEY)
    assert SERVICE_KEY not in repr(queue)
    low = queue.enqueue(PAYLOAD, priority=0)
    high = queue.enqueue(PAYLOAD, priority=5, user_id=uuid.uuid4())
    assert isinstance(high.id, uuid.UUID) and high.status == "pending" and high.created_at is not None
    claimed = queue.claim("rest-worker", 5, 60)
    assert [j.id for j in claimed] == [high.id, low.id]
    assert all(j.status == "processing" and j.worker_id == "rest-worker" for j in claimed)
    flow_run = uuid.uuid4()
    assert queue.start(high.id, 1, worker_id="rest-worker", flow_run_id=flow_run, lease_s=60) is True
    assert queue.progress(high.id, 1, 37.5, "GENERATING_VOICE", "Voice 2/5") is True
    assert queue.extend_lease(high.id, 1, 120) is True
    row = queue.get(high.id)
    assert row is not None and (row.progress, row.stage, row.flow_run_id) == (37.5, "GENERATING_VOICE", flow_run)
    result = {"success": True, "data": {"outputUrl": "https://x/y.mp3", "storagePath": "renders/y.mp3"}}
    assert queue.complete(high.id, 1, result) is True
    assert queue.complete(high.id, 1, result) is False  # fenced: already completed
    assert queue.get(high.id).result == result  # type: ignore[union-attr]
    assert queue.fail(low.id, 1, "TTS timeout", permanent=False, backoff_base_s=30) == "pending"
    assert queue.fail(low.id, 1, "again", permanent=False) is None  # PostgREST returns null: no longer owned
    stats = queue.stats()
    assert (stats["completed"], stats["pending"], stats["total"]) == (1, 1, 2)
    assert queue.active() == [] and queue.requeue_expired() == []
    assert queue.ping()
    fns = [fn for fn, _, _ in rest.calls]
    assert "audio_job_claim" in fns and "audio_job_complete" in fns
    _, args, headers = next(c for c in rest.calls if c[0] == "audio_job_claim")
    assert args == {"p_worker_id": "rest-worker", "p_limit": 5, "p_lease_seconds": 60}
    assert headers["apikey"] == SERVICE_KEY and headers["authorization"] == f"Bearer {SERVICE_KEY}"


def test_anon_key_cannot_claim(rest: PostgrestRpcServer, pg_queue: Any) -> None:
    pg_queue.enqueue(PAYLOAD)
    queue = SupabaseQueue(rest.url, ANON_KEY)
    with pytest.raises(QueueError, match="permission denied for function audio_job_claim"):
        queue.claim("intruder", 5, 60)
    assert not queue.ping()
    assert pg_queue.stats()["pending"] == 1


def test_unreachable_endpoint_is_transient() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]
    queue = SupabaseQueue(f"http://127.0.0.1:{port}", SERVICE_KEY, timeout_s=2)
    with pytest.raises(QueueUnavailable):
        queue.claim("w", 1, 60)
    assert not queue.ping()


def test_build_queue_picks_the_transport_from_settings(rest: PostgrestRpcServer, pg_dsn: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mindscript.queue.postgres import PostgresQueue

    monkeypatch.delenv("DATABASE_URL", raising=False)  # CI sets it for the test databases
    monkeypatch.delenv("SUPABASE_DB_URL", raising=False)

    rest_only = Settings(supabase_url=rest.url, supabase_service_key=SERVICE_KEY)  # type: ignore[arg-type]
    assert isinstance(build_queue(rest_only), SupabaseQueue)
    both = Settings(supabase_url=rest.url, supabase_service_key=SERVICE_KEY,  # type: ignore[arg-type]
                    database_url=pg_dsn)  # type: ignore[arg-type]
    direct = build_queue(both)
    assert isinstance(direct, PostgresQueue) and direct.ping()
    assert pg_dsn not in repr(direct)
    direct.close()
    preferred = Settings(supabase_db_url=pg_dsn, database_url="postgresql://nobody@127.0.0.1:1/x")  # type: ignore[arg-type]
    assert preferred.queue_dsn == pg_dsn
