"""deployments/warm.py: renders start in interpreters that imported everything before the run arrived."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from deployments import warm

PROBE = "tests.integration.warm_probe"


def _report(path: str) -> None:
    """Runs in a warm child: what it had imported before the call, and when."""
    probe = sys.modules.get(PROBE)
    Path(path).write_text(json.dumps({"pid": os.getpid(), "preloaded": probe is not None,
                                      "imported_at": getattr(probe, "IMPORTED_AT", None), "called_at": time.time()}))


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _wait_for(path: Path, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


@pytest.fixture
def pool():
    p = warm.WarmPool(2, preload=(PROBE,))
    yield p
    p.close()


def test_a_call_runs_in_an_interpreter_that_had_already_imported_its_modules(pool: warm.WarmPool,
                                                                              tmp_path: Path) -> None:
    time.sleep(3)  # let both interpreters finish importing
    out = tmp_path / "a.json"
    proc = pool.dispatch(_report, (str(out),), {}, flow_run_id="run-a")
    report = _wait_for(out)
    proc.join(30)
    assert proc.exitcode == 0 and report["pid"] == proc.pid
    assert report["preloaded"] and report["imported_at"] < report["called_at"] - 1.0  # imported before the call
    assert pool.cold == 0 and pool.dispatched == 1


def test_each_process_runs_one_call_and_a_replacement_is_warmed(pool: warm.WarmPool, tmp_path: Path) -> None:
    pids = set()
    for i in range(4):
        out = tmp_path / f"{i}.json"
        proc = pool.dispatch(_report, (str(out),), {})
        pids.add(_wait_for(out)["pid"])
        proc.join(30)
        assert proc.exitcode == 0  # exits after its one call: memory goes back, state never leaks
    assert len(pids) == 4


def test_running_maps_flow_runs_to_pids_and_a_killed_render_leaves_the_pool_working(pool: warm.WarmPool,
                                                                                     tmp_path: Path) -> None:
    victim = pool.dispatch(_sleep, (60,), {}, flow_run_id="run-victim")
    assert pool.running() == {"run-victim": victim.pid}
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    assert victim.exitcode == -signal.SIGKILL
    assert pool.running() == {}
    out = tmp_path / "after.json"
    proc = pool.dispatch(_report, (str(out),), {})
    assert _wait_for(out)["pid"] == proc.pid


def test_install_routes_prefects_spawn_context_through_the_pool(tmp_path: Path) -> None:
    import multiprocessing

    import prefect.flow_engine as engine

    pool = warm.install(1)
    try:
        assert pool is not None
        ctx = engine.multiprocessing.get_context("spawn")
        assert engine.multiprocessing.get_context("fork") is multiprocessing.get_context("fork")
        out = tmp_path / "p.json"
        process = ctx.Process(target=_report, args=(str(out),))
        process.start()
        process.join(60)
        assert process.exitcode == 0 and _wait_for(out)["pid"] == process.pid
        assert pool.dispatched == 1
    finally:
        warm.uninstall(pool)
    assert engine.multiprocessing is multiprocessing
