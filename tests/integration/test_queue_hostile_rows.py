"""Rows whose payload Python's JSON decoder refuses must not break a claim (real Postgres, directly and through
the REST transport).

jsonb stores integers of any length and arrays nested thousands deep; ``json.loads`` raises ValueError past
4300 digits and RecursionError past ~1000 levels. Before the fix one such row made ``claim()`` raise after
the rows were already leased, so every row of the batch sat in processing until its lease ran out, again and
again; and a row nested a few hundred levels deep decoded but then broke Prefect's walk of the ingest task's
inputs. Now each bad row decodes to a value that validation rejects with the field named.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import psycopg
import pytest

from mindscript.errors import InvalidJob, QueueError
from mindscript.job import parse_job
from mindscript.queue.base import QueueJob, Undecodable, loads_json
from mindscript.queue.postgres import PostgresQueue
from mindscript.queue.supabase import SupabaseQueue
from tests.servers._http import LoopbackServer
from tests.servers.postgrest import SERVICE_KEY, PostgrestRpcServer

GOOD = '{"type": "render", "projectData": {"scriptText": "Rest.", "durationMin": 0.5}}'
DEEP = "[" * 1500 + "]" * 1500
# raw jsonb text -> the field the validation message must name
HOSTILE = {
    '{"projectData": {"durationMin": 1e5000}}': "payload.projectData.durationMin",
    '{"projectData": {"durationMin": -1e5000}}': "payload.projectData.durationMin",
    '{"projectData": {"durationMin": 1, "layers": {"solfeggio": {"hz": 1e400}}}}':
        "payload.projectData.layers.solfeggio.hz",
    '{"projectData": {"durationMin": ' + DEEP + "}}": "payload",
    '{"projectData": {"durationMin": 1, "x": ' + DEEP + "}}": "payload",
    # decodes, but Prefect walks task inputs recursively (ingest died with RecursionError at ~700 levels)
    '{"projectData": {"durationMin": 1, "x": ' + "[" * 700 + "]" * 700 + "}}": "payload",
    '{"projectData": {"durationMin": 1, "scriptText": "' + "\u00e9\u4e2d\U0001f9d8" * 300_000 + '"}}':
        "payload.projectData.scriptText",
    '"not an object"': "payload",
    "null": "payload",
}


def _insert(dsn: str, texts: list[str]) -> list[uuid.UUID]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [conn.execute("INSERT INTO audio_job_queue (payload, priority) VALUES (%s::jsonb, %s) RETURNING id",
                             (text, -i)).fetchone()[0] for i, text in enumerate(texts)]  # type: ignore[index]


def test_loads_json_turns_what_python_refuses_into_values_validation_rejects() -> None:
    assert loads_json('{"a": 1e5000, "b": ' + "9" * 5000 + ', "c": 12}') == {"a": float("inf"), "b": float("inf"),
                                                                              "c": 12}
    assert loads_json(DEEP) == Undecodable("nested too deeply")
    row = QueueJob.from_row({"id": uuid.uuid4(), "status": "pending", "payload": loads_json("[" * 33 + "]" * 33)})
    assert row.payload == Undecodable("nested deeper than 32 levels")
    ok = {"projectData": {"durationMin": 1, "x": [[[[[[[[[[1]]]]]]]]]]}}
    assert QueueJob.from_row({"id": uuid.uuid4(), "status": "pending", "payload": ok}).payload == ok
    assert loads_json(b'{"a": [1, 2.5, "x", null]}') == {"a": [1, 2.5, "x", None]}


def test_a_claim_with_hostile_rows_returns_every_row_and_each_fails_validation_by_name(
        pg_dsn: str, pg_queue: PostgresQueue) -> None:
    texts = [*HOSTILE, GOOD]  # the good row last: lowest priority
    ids = _insert(pg_dsn, texts)
    claimed = pg_queue.claim("w", 50, 60)
    assert [row.id for row in claimed] == ids  # no row lost, none stuck behind a decoder error
    for row, (text, field) in zip(claimed[:-1], HOSTILE.items(), strict=True):
        with pytest.raises(InvalidJob) as info:
            parse_job(row.job_document(), max_duration_minutes=60)
        assert info.value.message.startswith(f"{field}: "), (text[:60], info.value.message[:200])
        assert len(info.value.message) < 400
        assert pg_queue.fail(row.id, row.attempts, info.value.message, permanent=True) == "failed"
    good = parse_job(claimed[-1].job_document(), max_duration_minutes=60)
    assert good.project.duration_min == 0.5
    # the other reads decode the same rows
    assert {r.id for r in pg_queue.active()} == {ids[-1]}
    assert all(pg_queue.get(i) is not None for i in ids)
    assert pg_queue.stats()["failed"] == len(HOSTILE)


# -- the REST transport: rows are read with select=...,payload::text, so the payload arrives as a JSON string ----
def test_rest_claim_with_hostile_rows_returns_every_row_and_each_fails_validation_by_name(
        pg_dsn: str, pg_queue: PostgresQueue) -> None:
    ids = _insert(pg_dsn, [*HOSTILE, GOOD])
    with PostgrestRpcServer(pg_dsn) as server:
        queue = SupabaseQueue(server.url, SERVICE_KEY)
        claimed = queue.claim("rest-worker", 50, 60)
        assert [row.id for row in claimed] == ids  # the whole batch, the 1500-deep payloads included
        for row, (text, field) in zip(claimed[:-1], HOSTILE.items(), strict=True):
            with pytest.raises(InvalidJob) as info:
                parse_job(row.job_document(), max_duration_minutes=60)
            assert info.value.message.startswith(f"{field}: "), (text[:60], info.value.message[:200])
            assert queue.fail(row.id, row.attempts, info.value.message, permanent=True) == "failed"
        assert parse_job(claimed[-1].job_document(), max_duration_minutes=60).project.duration_min == 0.5
        assert {r.id for r in queue.active()} == {ids[-1]}
        assert [r.payload for r in (queue.get(i) for i in ids[-3:]) if r is not None] == [
            "not an object", None, json.loads(GOOD)]
        queue.close()
        claims = [args for fn, args, _ in server.calls if fn == "audio_job_claim"]
        assert claims == [{"p_worker_id": "rest-worker", "p_limit": 50, "p_lease_seconds": 60}]
    assert pg_queue.stats()["failed"] == len(HOSTILE)


class CannedRpc(LoopbackServer):
    """Answers every /rest/v1/rpc/<fn> call with a fixed JSON text."""

    def __init__(self, body: str) -> None:
        self.body = body.encode()
        self._start_http()

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        h.rfile.read(int(h.headers.get("Content-Length") or 0))
        h.send_response(200)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(self.body)))
        h.end_headers()
        h.wfile.write(self.body)


@pytest.fixture
def rest_with(request: pytest.FixtureRequest) -> Iterator[SupabaseQueue]:
    with CannedRpc(request.param) as server:
        queue = SupabaseQueue(server.origin, "service-key-for-tests")
        yield queue
        queue.close()


def _rows_text(payload: str) -> str:
    """What PostgREST sends for one claimed row whose jsonb payload is ``payload`` (cast to text)."""
    row = {"id": str(uuid.uuid4()), "status": "processing", "attempts": 1, "priority": 0, "max_attempts": 3,
           "payload": payload, "created_at": "2025-06-01T00:00:00+00:00"}
    return json.dumps([row])


@pytest.mark.parametrize("rest_with", [_rows_text('{"projectData": {"durationMin": 1' + "0" * 5000 + "}}")],
                         indirect=True)
def test_rest_claim_decodes_huge_numbers(rest_with: SupabaseQueue) -> None:
    [row] = rest_with.claim("w", 5, 60)
    assert isinstance(row, QueueJob) and row.payload == {"projectData": {"durationMin": float("inf")}}
    with pytest.raises(InvalidJob, match=r"^payload\.projectData\.durationMin: .*\(got inf\)"):
        parse_job(row.job_document(), max_duration_minutes=60)


@pytest.mark.parametrize("rest_with", [DEEP], indirect=True)
def test_rest_body_nested_too_deeply_is_a_queue_error_not_a_crash(rest_with: SupabaseQueue) -> None:
    # a function answering with JSON nested past the decoder's limit (no row read can: their payloads are
    # text) fails as a QueueError instead of a RecursionError escaping the adapter
    with pytest.raises(QueueError, match="nested too deeply"):
        rest_with.stats()
