"""Hostile payloads through the worker: ingest fails each bad row with its validation message and goes on.

Real Postgres and the Prefect test harness. Batches of generated payloads (tests/payloads.py, jsonb-safe) and
payloads Python's JSON decoder refuses are queued ahead of a good job; one ingest run must claim them all,
fail every bad row permanently with the message ``parse_job`` gives for it (naming the field), and still
create the good row's render run; the good job then renders from its row.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from flows.ingest import ingest_queue
from flows.render import render_job
from mindscript.errors import InvalidJob
from mindscript.job import parse_job
from mindscript.queue.base import QueueJob, loads_json
from mindscript.queue.postgres import PostgresQueue
from mindscript.settings import get_settings
from tasks import ingest as ingest_tasks
from tasks.queue import reset_queue
from tests.payloads import job_documents

GOOD = {"type": "render",
        "projectData": {"scriptText": "Breathe in slowly. And breathe out.", "durationMin": 0.2,
                        "layers": {"voice": {"enabled": True, "provider": "local"},
                                   "solfeggio": {"enabled": True, "hz": 528}}},
        "outputOptions": {"format": "mp3", "quality": "low"}}
DEEP = "[" * 1500 + "]" * 1500
UNDECODABLE = ['{"projectData": {"durationMin": 1e5000}}', '{"projectData": {"durationMin": ' + DEEP + "}}",
               '{"projectData": {"durationMin": 2, "layers": {"binaural": {"beatHz": -1e400}}}}',
               # decodes, but Prefect's recursive walk of the submit task's inputs died on it (found here)
               '{"projectData": {"durationMin": 1, "x": ' + "[" * 700 + "]" * 700 + "}}"]


@pytest.fixture(scope="module")
def render_deployment() -> str:
    render_job.to_deployment(name="render").apply()
    return ingest_tasks.RENDER_DEPLOYMENT


@pytest.fixture
def queue(pg_dsn: str, worker_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresQueue]:
    monkeypatch.setenv("DATABASE_URL", pg_dsn)
    monkeypatch.setenv("WORKER_ID", "fuzz-worker")
    monkeypatch.setenv("MAX_DURATION_MINUTES", "60")
    get_settings.cache_clear()
    reset_queue()
    q = PostgresQueue(pg_dsn)
    yield q
    q.close()
    reset_queue()


def _expected_message(payload_text: str) -> str | None:
    """What validation says about this payload as a row (None: it is a valid job)."""
    row = QueueJob.from_row({"id": uuid.uuid4(), "status": "pending", "payload": loads_json(payload_text)})
    try:
        parse_job(row.job_document(), max_duration_minutes=60)
    except InvalidJob as exc:
        return exc.message
    return None


def _stored_text(dsn: str, row_id: uuid.UUID) -> str:
    """The payload as Postgres gives it back (jsonb rewrites numbers: 1.75e+307 comes back as 308 digits)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT payload::text FROM audio_job_queue WHERE id = %s", (row_id,)).fetchone()
    assert row is not None
    return row[0]


def _enqueue(dsn: str, texts: list[str], priority: int) -> list[uuid.UUID]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [conn.execute("INSERT INTO audio_job_queue (payload, priority) VALUES (%s::jsonb, %s) RETURNING id",
                             (t, priority)).fetchone()[0] for t in texts]  # type: ignore[index]


def _ingest_batch(queue: PostgresQueue, dsn: str, deployment: str, bad: list[str]) -> uuid.UUID:
    """Queue ``bad`` ahead of one good job, run one ingest, check every row; returns the good row's id."""
    bad_ids = _enqueue(dsn, bad, priority=1)
    expected = {}
    for row_id, text in zip(bad_ids, bad, strict=True):
        message = _expected_message(_stored_text(dsn, row_id))
        assert message is not None, text[:200]
        expected[text] = message
    [good_id] = _enqueue(dsn, [json.dumps(GOOD)], priority=0)  # claimed after every bad row

    out = ingest_queue(max_jobs=len(bad) + 1, deployment=deployment)

    assert out["claimed"] == len(bad) + 1
    assert sorted(out["rejected"]) == sorted(str(i) for i in bad_ids)
    assert list(out["submitted"]) == [str(good_id)]
    for row_id, text in zip(bad_ids, bad, strict=True):
        row = queue.get(row_id)
        assert row is not None and row.status == "failed" and row.attempts == 1, text[:200]
        assert row.error == expected[text] == row.message  # the field-naming message, verbatim
        assert row.result == {"success": False,
                              "error": {"code": "INVALID_JOB", "message": expected[text], "stage": "INITIALIZING"}}
    good = queue.get(good_id)
    assert good is not None and good.status == "processing" and good.flow_run_id is not None
    return good_id


def _jsonb_text(doc: Any) -> str:
    payload = doc.get("payload", doc) if isinstance(doc, dict) else doc
    # tests/payloads.py nests values up to 3,000 levels deep and json.dumps recurses once per level: under
    # the default limit (less the frames of pytest, Hypothesis and Prefect below) a deep draw failed here,
    # before the row ever reached the queue
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        return json.dumps(payload)
    finally:
        sys.setrecursionlimit(limit)


# Prefect's background threads (log and event workers) use `random` while Hypothesis draws, which Hypothesis
# reports as a deprecation: harmless here, the drawn data does not depend on it. No shrinking: each example is
# an ingest flow run (a failure prints its batch as drawn).
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@settings(max_examples=4, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(batch=st.lists(job_documents(json_safe=True).map(_jsonb_text).filter(lambda t: _expected_message(t)),
                      min_size=4, max_size=8))
def test_generated_bad_rows_all_fail_by_name_and_the_good_row_after_them_is_submitted(
        queue: PostgresQueue, pg_dsn: str, render_deployment: str, batch: list[str]) -> None:
    try:
        _ingest_batch(queue, pg_dsn, render_deployment, batch)
    finally:  # free this worker's slots for the next example, whatever happened in this one
        for row in queue.active():
            queue.cancel(row.id, row.attempts, "test: next example")


def test_rows_python_cannot_decode_fail_by_name_and_the_good_row_renders(
        queue: PostgresQueue, pg_dsn: str, render_deployment: str) -> None:
    good_id = _ingest_batch(queue, pg_dsn, render_deployment, UNDECODABLE)
    failed = {r.error for r in (queue.get(i) for i in queue_ids(pg_dsn)) if r is not None and r.status == "failed"}
    assert any(e.startswith("payload.projectData.durationMin: ") and "(got inf)" in e for e in failed if e)
    assert any(e.startswith("payload: ") and "undecodable JSON: nested too deeply" in e for e in failed if e)
    assert any(e.startswith("payload: ") and "nested deeper than 32 levels" in e for e in failed if e)
    # the good row, still held by this worker, renders from its row (what its submitted flow run does)
    row = queue.get(good_id)
    assert row is not None
    result = render_job(parse_job(row.job_document()), queue_attempt=row.attempts)
    assert result["success"] is True
    done = queue.get(good_id)
    assert done is not None and done.status == "completed" and done.result["data"]["outputUrl"]
    # and the worker keeps claiming: the next ingest finds nothing left to do, without an error
    assert ingest_queue(max_jobs=2, deployment=render_deployment)["claimed"] == 0


def queue_ids(dsn: str) -> list[uuid.UUID]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM audio_job_queue")]
