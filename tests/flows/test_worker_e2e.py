"""The worker end to end: ``deployments/serve.py`` as a subprocess against the session's Prefect server and a
real Postgres database. Queued rows become completed rows with results and output files; a SIGKILLed render
is requeued and completed on a later attempt; /health and /stats answer; SIGTERM drains and exits 0.

The tests of this module run in order against one worker process (starting one costs several seconds).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from mindscript.queue.base import QueueJob
from mindscript.queue.postgres import PostgresQueue
from tests.pg import _admin, _with_db

ROOT = Path(__file__).resolve().parent.parent.parent
JOB = {"type": "render",
       "projectData": {"scriptText": "Breathe in slowly. And breathe out.", "durationMin": 0.15,
                       "layers": {"voice": {"enabled": True, "provider": "local"},
                                  "solfeggio": {"enabled": True, "hz": 528}}},
       "outputOptions": {"format": "mp3", "quality": "low"}}
MAX_JOBS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    queue: PostgresQueue
    port: int
    storage: Path
    log: Path
    seen: list[tuple[uuid.UUID, str, float, str | None]] = field(default_factory=list)

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def rows(self) -> list[QueueJob]:
        rows = [r for r in (self.queue.get(i) for i in self.ids) if r is not None]
        self.seen.extend((r.id, r.status, r.progress, r.stage) for r in rows)
        return rows

    ids: list[uuid.UUID] = field(default_factory=list)

    def wait(self, what: str, cond: Callable[[list[QueueJob]], Any], timeout: float = 150.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker exited with {self.proc.returncode}:\n{self.tail()}"
            if out := cond(self.rows()):
                return out
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}: {[(r.id, r.status, r.stage) for r in self.rows()]}"
                             f"\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def render_process(self, flow_run_id: uuid.UUID) -> psutil.Process | None:
        """The child process running ``flow_run_id``: from /stats (warm processes), else from its environment."""
        _, stats = self.get("/stats")
        for render in stats.get("renders", []):
            if render["flowRunId"] == str(flow_run_id):
                return psutil.Process(render["pid"])
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                env = child.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if env.get("PREFECT__FLOW_RUN_ID") == str(flow_run_id):
                return child
        return None


@pytest.fixture(scope="module")
def worker(prefect_server: str, pg_server_dsn: str, pg_template: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    name = f"mindscript_w_{uuid.uuid4().hex[:12]}"
    _admin(pg_server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    dsn = _with_db(pg_server_dsn, name)
    tmp = tmp_path_factory.mktemp("worker")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SUPABASE_"))}
    env.update({
        "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(tmp / "prefect"), "DATABASE_URL": dsn,
        "WORKER_ID": f"e2e-{uuid.uuid4().hex[:6]}", "MAX_JOBS": str(MAX_JOBS), "POLL_INTERVAL": "500",
        "HEALTH_PORT": str(port), "WORK_DIR": str(tmp / "work"), "STORAGE_DIR": str(tmp / "output"),
        "TTS_CACHE_DIR": str(tmp / "tts-cache"), "STORAGE_BACKEND": "local", "QUEUE_PROGRESS_INTERVAL_S": "0.2",
        "QUEUE_BACKOFF_BASE_S": "0.5", "QUEUE_LEASE_S": "30", "SHUTDOWN_GRACE": "90000",
        "PREFECT_LOGGING_LEVEL": "INFO",
    })
    log = tmp / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "deployments" / "serve.py")], cwd=tmp, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    queue = PostgresQueue(dsn)
    w = Worker(proc, queue, port, tmp / "output", log)
    try:
        yield w
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait(10)
        queue.close()
        _admin(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _outputs(storage: Path, job_id: uuid.UUID) -> list[Path]:
    return sorted(p for p in storage.rglob("*") if p.is_file() and str(job_id) in p.parts)


def _render_runs(rows: list[QueueJob]) -> dict[uuid.UUID, tuple[str, str]]:
    """State name and message of every render flow run of these jobs, read from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName

    ids = {str(r.id) for r in rows}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["render_job"])),
                                     deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["render"])))
    return {run.id: (run.state.name, run.state.message or "") for run in runs
            if run.state is not None and str(run.parameters.get("job", {}).get("id")) in ids}


def _flow_run_logs(run_ids: list[uuid.UUID]) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)))
    return "\n".join(f"{log.flow_run_id} {log.level} {log.message}" for log in logs)


def test_five_jobs_complete_and_a_killed_render_is_requeued_and_completed(worker: Worker) -> None:
    worker.ids = [worker.queue.enqueue(JOB).id for _ in range(5)]

    # a render that is under way (its process wrote a stage): SIGKILL its process
    def rendering(rows: list[QueueJob]) -> tuple[QueueJob, psutil.Process] | None:
        for row in rows:
            if row.status == "processing" and row.stage is not None and row.flow_run_id is not None:
                proc = worker.render_process(row.flow_run_id)
                if proc is not None:
                    return row, proc
        return None

    victim, proc = worker.wait("a running render", rendering)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    # /health and /stats answer while the worker is busy
    status, health = worker.get("/health")
    assert status == 200 and health["status"] == "healthy" and health["queue"] == {"connected": True}
    assert health["workerId"].startswith("e2e-") and isinstance(health["uptime"], float)
    assert isinstance(health["activeJobs"], int) and 0 <= health["activeJobs"] <= MAX_JOBS

    done = worker.wait("five completed rows", lambda rows: len(rows) == 5 and
                       all(r.status == "completed" for r in rows) and rows, timeout=240)

    # the killed attempt was given back and completed by a later one
    killed = next(r for r in done if r.id == victim.id)
    assert killed.attempts == victim.attempts + 1, killed
    assert killed.flow_run_id != victim.flow_run_id
    for row in done:
        assert row.result["success"] is True and row.progress == 100.0 and row.finished_at is not None
        key = row.result["data"]["storagePath"]
        files = _outputs(worker.storage, row.id)
        assert len(files) == 1, f"job {row.id} rendered to {files}"  # never twice to different keys
        assert files[0].stat().st_size > 1000
        assert files[0].as_posix().endswith(key)
    # progress was written in between, not only at the end
    between = {(i, stage) for i, status, pct, stage in worker.seen
               if status == "processing" and stage is not None and 0 < pct < 100}
    assert len({i for i, _ in between}) >= 3, between
    assert len({stage for _, stage in between}) >= 2, between

    # Prefect's view: every render flow run completed, except the killed one (Crashed); no process exited 1
    runs = _render_runs(done)
    assert len(runs) == 6, runs
    bad = {run_id: f"{name}: {msg}" for run_id, (name, msg) in runs.items()
           if name != "Completed" and run_id != victim.flow_run_id}
    assert not bad, f"{bad}\n{_flow_run_logs(list(bad))}"
    assert runs[victim.flow_run_id][0] == "Crashed", runs[victim.flow_run_id]

    status, stats = worker.get("/stats")
    assert status == 200
    assert stats["totalJobs"] == 5 and stats["successful"] == 5 and stats["failed"] == 0
    assert stats["successRate"] == 1.0
    assert stats["averageProcessingTime"] > 0 and stats["currentlyProcessing"] == 0 and stats["pending"] == 0
    assert stats["uptime"] > health["uptime"]


def test_sigterm_mid_render_finishes_the_job_and_exits_zero(worker: Worker) -> None:
    worker.ids = [worker.queue.enqueue(JOB).id]
    worker.wait("the render under way", lambda rows: rows[0].status == "processing" and rows[0].stage is not None)
    children = psutil.Process(worker.proc.pid).children(recursive=True)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(120) == 0, worker.tail()
    row = worker.queue.get(worker.ids[0])
    assert row is not None
    assert row.status == "completed" or (row.status == "pending" and "requeued" in (row.message or "")), row
    if row.status == "completed":
        assert len(_outputs(worker.storage, row.id)) == 1
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {alive}"
    assert "stopped" in worker.tail()
