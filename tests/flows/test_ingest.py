"""ingest_queue and the render flow's queue awareness, on the Prefect test harness and real Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.states import Crashed

from flows.ingest import ingest_queue
from flows.render import render_job
from mindscript.job import parse_job
from mindscript.queue.postgres import PostgresQueue
from mindscript.settings import get_settings
from tasks import ingest as ingest_tasks
from tasks.queue import reset_queue

VOICE_ONLY = {"type": "render",
              "projectData": {"scriptText": "Breathe in slowly. And breathe out.", "durationMin": 0.3,
                              "layers": {"voice": {"enabled": True, "provider": "local"},
                                         "solfeggio": {"enabled": True, "hz": 528}}},
              "outputOptions": {"format": "mp3", "quality": "low"}}
INVALID = {"type": "render", "projectData": {"scriptText": "x", "durationMin": -5}}


@pytest.fixture(scope="module")
def render_deployment() -> str:
    deployment = render_job.to_deployment(name="render")
    deployment.apply()
    return ingest_tasks.RENDER_DEPLOYMENT


@pytest.fixture
def queue(pg_dsn: str, worker_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresQueue]:
    monkeypatch.setenv("DATABASE_URL", pg_dsn)
    monkeypatch.setenv("WORKER_ID", "ingest-test")
    monkeypatch.setenv("QUEUE_PROGRESS_INTERVAL_S", "0.2")
    monkeypatch.setenv("ALLOW_LOCAL_ASSETS", "false")
    get_settings.cache_clear()
    reset_queue()
    q = PostgresQueue(pg_dsn)
    yield q
    q.close()
    reset_queue()


def _flow_run(run_id: str | uuid.UUID) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(str(run_id)))


def test_rows_become_flow_runs_and_an_invalid_row_fails_without_stopping_ingest(
        queue: PostgresQueue, render_deployment: str) -> None:
    first = queue.enqueue(VOICE_ONLY, priority=1)
    bad = queue.enqueue(INVALID, priority=1)
    second = queue.enqueue(VOICE_ONLY)
    third = queue.enqueue(VOICE_ONLY)  # over capacity: stays pending

    out = ingest_queue(max_jobs=3, deployment=render_deployment)
    assert out["claimed"] == 3 and out["rejected"] == [str(bad.id)]
    assert set(out["submitted"]) == {str(first.id), str(second.id)}
    rejected = queue.get(bad.id)
    assert rejected is not None and rejected.status == "failed"
    assert "payload.projectData.durationMin" in (rejected.error or "") and "-5" in (rejected.error or "")
    assert rejected.result["error"]["code"] == "INVALID_JOB"
    for row in (first, second):
        now = queue.get(row.id)
        assert now is not None and now.status == "processing" and now.attempts == 1
        assert str(now.flow_run_id) == out["submitted"][str(row.id)]
        run = _flow_run(now.flow_run_id)  # type: ignore[arg-type]
        assert run.parameters["job"]["id"] == str(row.id) and run.parameters["queue_attempt"] == 1
        assert run.parameters["job"]["payload"]["projectData"]["durationMin"] == 0.3
        assert run.idempotency_key == f"render-job-{row.id}-1"
        assert run.state.is_scheduled()
    assert queue.get(third.id).status == "pending"  # type: ignore[union-attr]
    # full: this worker has 2 rows in processing
    assert ingest_queue(max_jobs=2, deployment=render_deployment)["claimed"] == 0


def test_the_same_row_twice_yields_one_flow_run(queue: PostgresQueue, render_deployment: str) -> None:
    queue.enqueue(VOICE_ONLY)
    [row] = queue.claim("ingest-test", 1, 60)
    one = ingest_tasks.submit.fn(row, render_deployment)  # e.g. ingest retried after creating the run
    two = ingest_tasks.submit.fn(row, render_deployment)
    assert one is not None and one == two
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey

        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            idempotency_key=FlowRunFilterIdempotencyKey(any_=[f"render-job-{row.id}-1"])))
    assert [str(r.id) for r in runs] == [one]


def test_a_crashed_run_that_wrote_nothing_is_requeued_by_ingest(queue: PostgresQueue, render_deployment: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_tasks, "SETTLE_AFTER_S", 0.0)  # the crash is old news
    job = queue.enqueue(VOICE_ONLY)
    out = ingest_queue(max_jobs=1, deployment=render_deployment)
    run_id = uuid.UUID(out["submitted"][str(job.id)])
    with get_client(sync_client=True) as client:  # what the runner reports after a SIGKILL
        client.set_flow_run_state(run_id, Crashed(message="Process exited with status -9"), force=True)
    out = ingest_queue(max_jobs=0, deployment=render_deployment)
    assert out["reconciled"] == {str(job.id): "pending"}
    row = queue.get(job.id)
    assert row is not None and row.status == "pending" and "Crashed" in (row.error or "")


def test_a_run_that_just_completed_is_left_to_its_own_hook(queue: PostgresQueue, render_deployment: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The completion hook writes the row right after the run enters Completed: ingest must not settle the row
    from the state in between (it did: the row went back to pending and the job was rendered twice)."""
    from prefect.states import Completed

    job = queue.enqueue(VOICE_ONLY)
    out = ingest_queue(max_jobs=1, deployment=render_deployment)
    run_id = uuid.UUID(out["submitted"][str(job.id)])
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Completed(), force=True)
    lease = queue.get(job.id).locked_until  # type: ignore[union-attr]
    out = ingest_queue(max_jobs=0, deployment=render_deployment)
    row = queue.get(job.id)
    assert out["reconciled"] == {} and row is not None and row.status == "processing"
    assert row.locked_until is not None and lease is not None and row.locked_until >= lease  # kept leased
    assert queue.complete(job.id, row.attempts, {"success": True, "data": None})  # the hook's write lands

    # a run that ended long ago without writing back (its hook never ran) is settled
    other = queue.enqueue(VOICE_ONLY)
    out = ingest_queue(max_jobs=1, deployment=render_deployment)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(out["submitted"][str(other.id)]), Completed(), force=True)
    monkeypatch.setattr(ingest_tasks, "SETTLE_AFTER_S", 0.0)
    out = ingest_queue(max_jobs=0, deployment=render_deployment)
    assert out["reconciled"] == {str(other.id): "pending"}


@pytest.mark.parametrize("state", ["Pending", "Running"])
def test_a_run_left_starting_by_a_dead_worker_is_crashed_and_requeued(queue: PostgresQueue, render_deployment: str,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      state: str) -> None:
    """A runner that took the run (Pending) and died before its process started, or whose process died before
    the render marked its row started (Running, maybe not one heartbeat sent), leaves the run there forever: no
    hook, no zombie detection. Ingest renewed the row's lease forever; now it crashes the run and requeues it."""
    from prefect.states import Pending, Running

    job = queue.enqueue(VOICE_ONLY)
    out = ingest_queue(max_jobs=1, deployment=render_deployment)
    run_id = uuid.UUID(out["submitted"][str(job.id)])
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Pending(name="Submitting") if state == "Pending" else Running(),
                                  force=True)
    assert ingest_queue(max_jobs=0, deployment=render_deployment)["reconciled"] == {}  # a start takes time
    assert queue.get(job.id).status == "processing"  # type: ignore[union-attr]

    monkeypatch.setattr(ingest_tasks, "PENDING_TIMEOUT_S", 0.0)
    out = ingest_queue(max_jobs=0, deployment=render_deployment)
    assert out["reconciled"] == {str(job.id): "pending"}
    row = queue.get(job.id)
    assert row is not None and row.status == "pending" and "the worker that took it is gone" in (row.error or "")
    run = _flow_run(run_id)
    assert run.state.is_crashed() and "render never started" in (run.state.message or "")


def test_a_started_render_whose_process_died_is_requeued_when_its_lease_runs_out(
        queue: PostgresQueue, render_deployment: str) -> None:
    """A started render renews its own lease; ingest must not renew it for the render (it did, so a render
    that died with its worker, without a heartbeat for the zombie automation, stayed processing forever)."""
    import time

    from prefect.states import Running

    job = queue.enqueue(VOICE_ONLY)
    out = ingest_queue(max_jobs=1, deployment=render_deployment)
    run_id = uuid.UUID(out["submitted"][str(job.id)])
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Running(), force=True)
    assert queue.start(job.id, 1, worker_id="gone", flow_run_id=run_id, lease_s=2)  # then its process died
    assert ingest_queue(max_jobs=0, deployment=render_deployment)["requeued"] == []
    time.sleep(2.5)
    out = ingest_queue(max_jobs=0, deployment=render_deployment)
    assert out["requeued"] == [str(job.id)]
    row = queue.get(job.id)
    assert row is not None and row.status == "pending" and "lease expired" in (row.error or "")


def _progress_log(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE progress_log (at timestamptz DEFAULT clock_timestamp(), status text, progress float8,
                                       stage text, message text);
            -- qualified: the queue functions run with an empty search_path, and so do triggers they fire
            CREATE FUNCTION log_progress() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO public.progress_log (status, progress, stage, message)
                  VALUES (NEW.status, NEW.progress, NEW.stage, NEW.message); RETURN NEW; END $$;
            CREATE TRIGGER log_progress AFTER UPDATE ON audio_job_queue FOR EACH ROW EXECUTE FUNCTION log_progress();
        """)


def test_render_flow_writes_progress_and_its_hooks_write_the_result(queue: PostgresQueue, pg_dsn: str) -> None:
    _progress_log(pg_dsn)
    job = queue.enqueue(VOICE_ONLY)
    [row] = queue.claim("ingest-test", 1, 60)
    result = render_job(parse_job(row.job_document()), queue_attempt=row.attempts)
    assert result["success"] is True
    done = queue.get(job.id)
    assert done is not None and done.status == "completed" and done.progress == 100
    assert done.result["data"]["outputUrl"] == result["data"]["outputUrl"]
    assert Path(result["data"]["outputUrl"].removeprefix("file://")).is_file()
    assert done.worker_id == "ingest-test" and done.flow_run_id is not None and done.finished_at is not None
    with psycopg.connect(pg_dsn) as conn:
        log = conn.execute("SELECT status, progress, stage FROM progress_log ORDER BY at").fetchall()
    progress = [p for s, p, _ in log if s == "processing"]
    stages = {st for s, _, st in log if s == "processing"}
    assert len(progress) >= 4 and any(0 < p < 100 for p in progress)
    assert progress == sorted(progress)  # never backwards
    assert {"INITIALIZING", "GENERATING_VOICE", "MIXING_AUDIO"} <= stages
    assert log[-1][0] == "completed"


def test_a_permanent_render_failure_fails_the_row_through_the_hook(queue: PostgresQueue,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    long_script = dict(VOICE_ONLY, projectData=dict(VOICE_ONLY["projectData"],  # type: ignore[arg-type]
                                                   scriptText="Breathe in, and breathe out. " * 40))
    monkeypatch.setenv("MAX_DURATION_MINUTES", "0.3")
    get_settings.cache_clear()
    job = queue.enqueue(long_script, max_attempts=3)
    [row] = queue.claim("ingest-test", 1, 60)
    with pytest.raises(Exception, match="minutes"):
        render_job(parse_job(row.job_document()), queue_attempt=row.attempts)
    failed = queue.get(job.id)
    assert failed is not None and failed.status == "failed" and failed.attempts == 1
    assert failed.result["error"]["code"] == "DURATION_TOO_LONG" and "minutes" in (failed.error or "")


def test_a_superseded_attempt_does_not_render(queue: PostgresQueue) -> None:
    job = queue.enqueue(VOICE_ONLY)
    [row] = queue.claim("ingest-test", 1, 60)
    assert queue.release(row.id, row.attempts, "test")
    queue.claim("other", 1, 60)  # attempt 2 belongs to someone else now
    with pytest.raises(Exception, match="no longer held"):
        render_job(parse_job(row.job_document()), queue_attempt=row.attempts)
    now = queue.get(job.id)
    assert now is not None and now.status == "processing" and now.worker_id == "other" and now.attempts == 2


def test_pool_capacity_counts_every_workers_active_rows(queue: PostgresQueue, render_deployment: str) -> None:
    for _ in range(4):
        queue.enqueue(VOICE_ONLY)
    assert len(queue.claim("another-worker", 2, 60)) == 2  # rendering elsewhere in the pool

    # this worker has none active: worker capacity would claim 2; the pool has 1 slot left of 3
    out = ingest_queue(max_jobs=3, deployment=render_deployment, capacity="pool")
    assert out["claimed"] == 1 and len(out["submitted"]) == 1
    assert ingest_queue(max_jobs=3, deployment=render_deployment, capacity="pool")["claimed"] == 0
    assert ingest_queue(max_jobs=3, deployment=render_deployment)["claimed"] == 1  # worker scope: 1 of its own
