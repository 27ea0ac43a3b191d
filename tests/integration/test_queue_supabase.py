"""The Supabase REST transport: supabase-py ``rpc`` against a local server speaking PostgREST's RPC format.

The server implements ``POST /rest/v1/rpc/<function>`` as PostgREST does: JSON object of named arguments in,
a JSON array for set-returning functions (a scalar otherwise) out; the role comes from the API key (service
key: service_role, anon key: anon) and the call runs under it in Postgres, so grants are really checked;
errors are ``{"code", "message", "details", "hint"}`` with PostgREST's status codes. It forwards to the real
SQL functions of the migrated test database.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from mindscript.errors import QueueError, QueueUnavailable
from mindscript.queue.supabase import SupabaseQueue
from mindscript.services import build_queue
from mindscript.settings import Settings

SERVICE_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2VydmljZS1zaWduYXR1cmU"
ANON_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.YW5vbi1zaWduYXR1cmU"
PAYLOAD = {"type": "render", "projectData": {"scriptText": "Rest.", "durationMin": 0.5}}
_FN = re.compile(r"^/rest/v1/rpc/(?P<fn>[a-z_][a-z0-9_]*)$")


class PostgrestRpcServer:
    """A loopback PostgREST stand-in for /rest/v1/rpc/*, backed by a real database."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                status, body = server.handle(self.path, dict(self.headers.items()),
                                             self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PostgrestRpcServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _error(status: int, code: str, message: str, details: str | None = None) -> tuple[int, Any]:
        return status, {"code": code, "message": message, "details": details, "hint": None}

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        headers = {k.lower(): v for k, v in headers.items()}
        match = _FN.match(path.split("?")[0])
        if not match:
            return self._error(404, "PGRST125", f"Invalid path specified in request URL: {path}")
        key = headers.get("apikey", "")
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        if key not in (SERVICE_KEY, ANON_KEY) or bearer not in (SERVICE_KEY, ANON_KEY):
            return self._error(401, "PGRST301", "JWSError JWSInvalidSignature")
        role = "service_role" if bearer == SERVICE_KEY else "anon"
        args = json.loads(raw or b"{}")
        fn = match["fn"]
        self.calls.append((fn, args, headers))
        with psycopg.connect(self.dsn) as conn:
            found = conn.execute("SELECT p.proretset FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                                 "WHERE n.nspname = 'public' AND p.proname = %s", (fn,)).fetchone()
            if found is None:
                return self._error(404, "PGRST202", f"Could not find the function public.{fn} in the schema cache")
            named = sql.SQL(", ").join(
                sql.SQL("{} => {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in args)
            call = sql.SQL("public.{}({})").format(sql.Identifier(fn), named)
            query = (sql.SQL("SELECT coalesce(json_agg(t), '[]'::json) FROM {} t").format(call) if found[0]
                     else sql.SQL("SELECT to_json({})").format(call))
            params = {k: Jsonb(v) if isinstance(v, dict | list) else v for k, v in args.items()}
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                    conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps({"role": role}),))
                    value = conn.execute(query, params).fetchone()[0]  # type: ignore[index]
            except psycopg.errors.InsufficientPrivilege as exc:
                return self._error(401 if role == "anon" else 403, "42501", str(exc).splitlines()[0])
            except psycopg.Error as exc:
                return self._error(400, exc.sqlstate or "XX000", str(exc).splitlines()[0])
        return 200, value


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
