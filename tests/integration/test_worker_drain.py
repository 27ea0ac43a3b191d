"""The worker's shutdown drain (deployments/serve.py::_drain) on real Postgres: claimed rows not started are
given back at once; started ones get the grace, then are given back; a render finishing in the grace stays
completed. Given-back rows keep their attempt (release does not spend one)."""

from __future__ import annotations

import importlib.util
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
JOB = {"type": "render", "projectData": {"scriptText": "Breathe.", "durationMin": 0.2}}


def _serve() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mindscript_serve", ROOT / "deployments" / "serve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_drain_gives_back_unstarted_rows_at_once_and_started_ones_after_the_grace(pg_queue: Any) -> None:
    serve = _serve()
    for _ in range(3):
        pg_queue.enqueue(JOB)
    waiting, running, finishing = pg_queue.claim("w1", 3, 60)
    for row in (running, finishing):
        assert pg_queue.start(row.id, row.attempts, worker_id="w1", flow_run_id=uuid.uuid4(), lease_s=60)
    other = pg_queue.enqueue(JOB)
    [other] = pg_queue.claim("w2", 1, 60)  # another worker's row is not touched

    def finish() -> None:
        time.sleep(0.5)
        pg_queue.complete(finishing.id, finishing.attempts, {"success": True, "data": None})

    threading.Thread(target=finish).start()
    t0 = time.monotonic()
    released = serve._drain(pg_queue, "w1", 2.0)
    elapsed = time.monotonic() - t0

    assert {r.id for r in released} == {waiting.id, running.id}
    assert elapsed >= 2.0  # the started render got its grace
    for row in (waiting, running):
        now = pg_queue.get(row.id)
        assert now.status == "pending" and now.attempts == row.attempts and "requeued" in now.message
        assert now.max_attempts == row.max_attempts + 1  # the attempt was not spent
    assert pg_queue.get(finishing.id).status == "completed"
    assert pg_queue.get(other.id).status == "processing"


def test_drain_returns_as_soon_as_nothing_is_active(pg_queue: Any) -> None:
    serve = _serve()
    pg_queue.enqueue(JOB)
    [row] = pg_queue.claim("w1", 1, 60)
    t0 = time.monotonic()
    assert [r.id for r in serve._drain(pg_queue, "w1", 30.0)] == [row.id]
    assert time.monotonic() - t0 < 10
