"""The queue on real Postgres (migrations applied to a template database; one clone per test).

Most scenarios run on both the Postgres repository and the in-memory twin, so the twin stays faithful.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from mindscript.errors import InvalidJob
from mindscript.job import parse_job
from mindscript.queue.base import JobQueue, QueueJob
from mindscript.queue.memory import InMemoryQueue
from mindscript.queue.postgres import PostgresQueue

PAYLOAD = {"type": "render",
           "projectData": {"scriptText": "Breathe in. Breathe out.", "durationMin": 0.5},
           "outputOptions": {"format": "mp3", "quality": "low"}}


@pytest.fixture(params=["postgres", "memory"])
def queue(request: pytest.FixtureRequest) -> Iterator[JobQueue]:
    if request.param == "memory":
        yield InMemoryQueue()
    else:
        yield request.getfixturevalue("pg_queue")


def _make_available(queue: JobQueue, dsn: str | None, job_id: uuid.UUID) -> None:
    """Skip a row's backoff (tests only): available_at = now."""
    if isinstance(queue, InMemoryQueue):
        job = queue.get(job_id)
        assert job is not None and job.available_at is not None
        queue.insert(QueueJob(**{**job.__dict__, "available_at": job.available_at - timedelta(days=1)}))
    else:
        assert dsn is not None
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE audio_job_queue SET available_at = now() WHERE id = %s", (job_id,))


def _dsn(request: pytest.FixtureRequest, queue: JobQueue) -> str | None:
    return None if isinstance(queue, InMemoryQueue) else request.getfixturevalue("pg_dsn")


# -- the row contract ------------------------------------------------------------------------------------
def test_row_with_only_payload_is_a_valid_pending_job(pg_dsn: str, pg_queue: PostgresQueue) -> None:
    with psycopg.connect(pg_dsn, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute("INSERT INTO audio_job_queue (payload) VALUES (%s) RETURNING *",
                           (Jsonb(PAYLOAD),)).fetchone()
    assert row is not None
    job = QueueJob.from_row(row)
    assert isinstance(job.id, uuid.UUID)
    assert (job.status, job.attempts, job.max_attempts, job.priority, job.progress) == ("pending", 0, 3, 0, 0.0)
    assert job.user_id is None and job.result is None and job.created_at is not None
    [claimed] = pg_queue.claim("w1", 10, 60)
    assert claimed.id == job.id and claimed.status == "processing" and claimed.attempts == 1
    render_job = parse_job(claimed.job_document())
    assert render_job.id == str(job.id)  # the row id is the job id
    assert render_job.project.duration_min == 0.5


def test_invalid_payload_message_names_the_field(pg_queue: PostgresQueue) -> None:
    bad = pg_queue.enqueue({"type": "render", "projectData": {"durationMin": -5}})
    [claimed] = pg_queue.claim("w1", 1, 60)
    with pytest.raises(InvalidJob) as info:
        parse_job(claimed.job_document())
    assert "payload.projectData.durationMin" in info.value.message and "-5" in info.value.message
    assert pg_queue.fail(bad.id, 1, info.value.message, permanent=True) == "failed"
    row = pg_queue.get(bad.id)
    assert row is not None and row.status == "failed" and "durationMin" in (row.error or "")


# -- claiming ----------------------------------------------------------------------------------------------
def test_claim_order_is_priority_then_oldest(queue: JobQueue) -> None:
    rnd = random.Random(5)
    made = [queue.enqueue({"n": i}, priority=rnd.choice([0, 1, 5, 10])) for i in range(40)]
    expected = [j.id for j in sorted(made, key=lambda j: (-j.priority, j.payload["n"]))]
    got: list[uuid.UUID] = []
    while batch := queue.claim("w", 3, 60):
        got.extend(j.id for j in batch)
    assert got == expected


def test_delayed_job_is_not_claimed_before_available_at(queue: JobQueue) -> None:
    later = queue.enqueue({"n": 1}, delay_s=3600)
    now = queue.enqueue({"n": 2})
    assert [j.id for j in queue.claim("w", 10, 60)] == [now.id]
    assert queue.get(later.id).status == "pending"  # type: ignore[union-attr]


def test_eight_concurrent_claimers_take_each_row_exactly_once(pg_dsn: str) -> None:
    rnd = random.Random(42)
    seed = PostgresQueue(pg_dsn, max_size=2)
    rank: dict[uuid.UUID, int] = {}
    made = [seed.enqueue({"n": i}, priority=rnd.randint(0, 5)) for i in range(300)]
    for r, job in enumerate(sorted(made, key=lambda j: (-j.priority, j.payload["n"]))):
        rank[job.id] = r
    seed.close()

    batch_size, claimers = 5, 8
    batches: list[tuple[str, list[QueueJob]]] = []  # in the order claims returned
    lock = threading.Lock()
    barrier = threading.Barrier(claimers)
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        q = PostgresQueue(pg_dsn, min_size=1, max_size=1)
        try:
            barrier.wait()
            while True:
                got = q.claim(name, batch_size, 60)
                if not got:
                    return
                with lock:
                    batches.append((name, got))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            q.close()

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    ids = [j.id for _, b in batches for j in b]
    assert len(ids) == 300 and set(ids) == set(rank)  # every row, once
    assert all(j.worker_id == name and j.attempts == 1 for name, b in batches for j in b)
    assert len({name for name, _ in batches}) > 1  # the claimers really ran side by side
    for _, b in batches:  # each claim is in priority order...
        assert [rank[j.id] for j in b] == sorted(rank[j.id] for j in b)
    # ...and across claims the order holds up to what the in-flight claims (at most 8) can reorder.
    slack = 2 * claimers * batch_size
    for k, (_, b) in enumerate(batches):
        assert max(rank[j.id] for j in b) < (k + 1) * batch_size + slack


# -- leases, attempts, backoff -----------------------------------------------------------------------------
def test_lease_expiry_requeues_and_fences_the_old_attempt(queue: JobQueue, request: pytest.FixtureRequest) -> None:
    job = queue.enqueue(PAYLOAD)
    [a1] = queue.claim("w1", 1, 0)  # lease already over
    assert queue.progress(job.id, 1, 60, "MIXING_AUDIO", "Mixing")
    assert queue.extend_lease(a1.id, 1, 0)
    [requeued] = queue.requeue_expired(backoff_base_s=30, backoff_max_s=600)
    assert requeued.id == job.id and requeued.status == "pending" and requeued.attempts == 1
    assert (requeued.progress, requeued.stage) == (0, None)  # pending again: starts over, not "60 % mixing"
    assert "lease expired on worker w1" in (requeued.error or "")
    assert queue.claim("w2", 1, 60) == []  # backoff: not yet
    _make_available(queue, _dsn(request, queue), job.id)
    [a2] = queue.claim("w2", 1, 60)
    assert a2.attempts == 2 and a2.worker_id == "w2"
    # the first worker wakes up: none of its writes land
    assert not queue.progress(job.id, 1, 50, "MIXING_AUDIO", "stale")
    assert not queue.complete(job.id, 1, {"success": True})
    assert queue.fail(job.id, 1, "stale", permanent=True) is None
    assert queue.progress(job.id, 2, 42.5, "MIXING_AUDIO", "Mixing 40%")
    row = queue.get(job.id)
    assert row is not None and (row.progress, row.stage, row.message) == (42.5, "MIXING_AUDIO", "Mixing 40%")
    assert queue.complete(job.id, 2, {"success": True, "data": {"outputUrl": "file:///x"}})
    assert not queue.complete(job.id, 2, {"success": True})  # idempotent: the second write is refused
    done = queue.get(job.id)
    assert done is not None and done.status == "completed" and done.progress == 100
    assert done.result == {"success": True, "data": {"outputUrl": "file:///x"}} and done.finished_at is not None


def test_live_lease_is_not_requeued(queue: JobQueue) -> None:
    queue.enqueue(PAYLOAD)
    [job] = queue.claim("w1", 1, 60)
    assert queue.requeue_expired() == []
    assert queue.get(job.id).status == "processing"  # type: ignore[union-attr]


def test_transient_failures_back_off_until_max_attempts_then_fail_with_last_error(
        queue: JobQueue, request: pytest.FixtureRequest) -> None:
    dsn = _dsn(request, queue)
    job = queue.enqueue(PAYLOAD, max_attempts=3)
    delays = []
    for attempt in (1, 2, 3):
        [claimed] = queue.claim("w", 1, 60)
        assert claimed.attempts == attempt
        assert queue.progress(job.id, attempt, 30, "GENERATING_VOICE", "voice")
        status = queue.fail(job.id, attempt, f"TTS timeout #{attempt}", permanent=False, backoff_base_s=20,
                            backoff_max_s=60, result={"success": False, "error": {"message": f"#{attempt}"}})
        row = queue.get(job.id)
        assert row is not None and row.available_at is not None and row.updated_at is not None
        if attempt < 3:
            assert status == "pending" and row.status == "pending" and row.result is None
            assert (row.progress, row.stage) == (0, None)
            delays.append((row.available_at - row.updated_at).total_seconds())
            assert queue.claim("w", 1, 60) == []
            _make_available(queue, dsn, job.id)
    assert delays == pytest.approx([20, 40], abs=0.5)  # base * 2^(attempt-1), capped at 60
    assert status == "failed"
    final = queue.get(job.id)
    assert final is not None and final.status == "failed" and final.attempts == 3
    assert final.error == "TTS timeout #3" and final.finished_at is not None
    assert (final.progress, final.stage) == (30, "GENERATING_VOICE")  # failed for good: where it stopped
    assert final.result == {"success": False, "error": {"message": "#3"}}


def test_expired_lease_on_the_last_attempt_fails_the_row(queue: JobQueue) -> None:
    job = queue.enqueue(PAYLOAD, max_attempts=1)
    queue.claim("w9", 1, 0)
    [row] = queue.requeue_expired()
    assert row.id == job.id and row.status == "failed" and "lease expired on worker w9" in (row.error or "")


def test_permanent_failure_fails_at_once(queue: JobQueue) -> None:
    job = queue.enqueue(PAYLOAD, max_attempts=5)
    queue.claim("w", 1, 60)
    assert queue.fail(job.id, 1, "payload.projectData.durationMin: must be ...", permanent=True) == "failed"
    assert queue.get(job.id).status == "failed"  # type: ignore[union-attr]


def test_release_and_cancel(queue: JobQueue) -> None:
    a, b = queue.enqueue(PAYLOAD), queue.enqueue(PAYLOAD)
    queue.claim("w", 2, 60)
    fr = uuid.uuid4()
    assert queue.start(a.id, 1, worker_id="w", flow_run_id=fr, lease_s=60)
    assert queue.get(a.id).flow_run_id == fr  # type: ignore[union-attr]
    assert [j.id for j in queue.active("w")] == [a.id, b.id] or {j.id for j in queue.active()} == {a.id, b.id}
    assert queue.release(a.id, 1, "worker shutting down")
    row = queue.get(a.id)
    assert row is not None and (row.status, row.attempts, row.max_attempts, row.flow_run_id) == ("pending", 1, 4, None)
    assert queue.cancel(b.id, 1, "Flow run was cancelled")
    assert queue.get(b.id).status == "cancelled"  # type: ignore[union-attr]
    [again] = queue.claim("w2", 5, 60)
    assert again.id == a.id and again.attempts == 2  # a new attempt number: a new flow run key


def test_stats(queue: JobQueue) -> None:
    jobs = [queue.enqueue(PAYLOAD) for _ in range(5)]
    queue.claim("w", 3, 60)
    assert queue.complete(jobs[0].id, 1, {"success": True})
    assert queue.complete(jobs[1].id, 1, {"success": True})
    assert queue.fail(jobs[2].id, 1, "boom", permanent=True) == "failed"
    s = queue.stats()
    assert {k: s[k] for k in ("total", "pending", "processing", "completed", "failed", "cancelled")} == {
        "total": 5, "pending": 2, "processing": 0, "completed": 2, "failed": 1, "cancelled": 0}
    assert s["successRate"] == pytest.approx(2 / 3, abs=1e-3)
    assert s["avgProcessingSeconds"] is not None and s["avgProcessingSeconds"] >= 0
    assert s["oldestPendingSeconds"] is not None and s["oldestPendingSeconds"] >= 0
    json.dumps(s)  # JSON-ready for /stats


# -- Row Level Security ------------------------------------------------------------------------------------
def _as_user(conn: psycopg.Connection[Any], user: uuid.UUID | None, role: str = "authenticated") -> None:
    claims = {"sub": str(user), "role": role} if user else {"role": role}
    conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
    conn.execute(f"SET LOCAL ROLE {role}")


def test_rls_each_user_sees_and_inserts_only_their_own_rows_and_cannot_claim(
        pg_dsn: str, pg_queue: PostgresQueue) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    a_job = pg_queue.enqueue(PAYLOAD, user_id=alice)
    b_job = pg_queue.enqueue(PAYLOAD, user_id=bob)
    pg_queue.enqueue(PAYLOAD)  # a service job, nobody's

    with psycopg.connect(pg_dsn, row_factory=dict_row) as conn:
        for user, own, other in ((alice, a_job, b_job), (bob, b_job, a_job)):
            with conn.transaction(force_rollback=True):
                _as_user(conn, user)
                assert conn.execute("SELECT auth.uid() AS u").fetchone() == {"u": user}
                seen = [r["id"] for r in conn.execute("SELECT id FROM audio_job_queue").fetchall()]
                assert seen == [own.id]
                assert conn.execute("SELECT count(*) AS n FROM audio_job_queue WHERE id = %s",
                                    (other.id,)).fetchone() == {"n": 0}
                # an app insert with only the payload: user_id defaults to auth.uid()
                mine = conn.execute("INSERT INTO audio_job_queue (payload) VALUES (%s) RETURNING id, user_id",
                                    (Jsonb(PAYLOAD),)).fetchone()
                assert mine is not None and mine["user_id"] == user
            with conn.transaction(force_rollback=True):  # a job for someone else: refused by the policy
                _as_user(conn, user)
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                    conn.execute("INSERT INTO audio_job_queue (payload, user_id) VALUES (%s, %s)",
                                  (Jsonb(PAYLOAD), other.user_id))
            with conn.transaction(force_rollback=True):  # a row that claims to be finished: no such grant
                _as_user(conn, user)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("INSERT INTO audio_job_queue (payload, status) VALUES (%s, 'completed')",
                                 (Jsonb(PAYLOAD),))
            with conn.transaction(force_rollback=True):  # updating even their own row: only the service does
                _as_user(conn, user)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("UPDATE audio_job_queue SET status = 'completed' WHERE id = %s", (own.id,))
            for fn in ("audio_job_claim('x', 10, 60)", "audio_job_stats()", "audio_job_requeue_expired()",
                       f"audio_job_complete('{own.id}', 1, '{{}}'::jsonb)"):
                with conn.transaction(force_rollback=True):
                    _as_user(conn, user)
                    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
                        conn.execute(f"SELECT * FROM {fn}")
        with conn.transaction(force_rollback=True):  # anon: nothing at all
            _as_user(conn, None, role="anon")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT id FROM audio_job_queue")
        with conn.transaction(force_rollback=True):  # the service role claims everything
            _as_user(conn, None, role="service_role")
            claimed = conn.execute("SELECT id FROM audio_job_claim('svc', 10, 60)").fetchall()
            assert len(claimed) == 3
    assert pg_queue.get(a_job.id).status == "pending"  # type: ignore[union-attr]  # rolled back


def test_table_is_published_for_realtime(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'")
        assert ("audio_job_queue",) in rows.fetchall()


def test_migrations_are_recorded_and_reapply_as_no_ops(pg_dsn: str) -> None:
    from mindscript.queue.migrate import apply_migrations, migration_files

    assert apply_migrations(pg_dsn) == []
    with psycopg.connect(pg_dsn) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM supabase_migrations.schema_migrations")]
    assert versions == [p.name.split("_")[0] for p in migration_files()]
