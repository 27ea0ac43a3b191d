"""TTS chunk file locks: a holder that dies without releasing gives the lock up at once, a live one does not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tasks.voice import _ExpiringFileLocks

ROOT = Path(__file__).resolve().parent.parent.parent
HOLD_S = 600.0  # far longer than the test: only the holder's death can free the lock

HOLDER = """
import sys, time
from pathlib import Path
from tasks.voice import _ExpiringFileLocks
locks = _ExpiringFileLocks(Path(sys.argv[1]), float(sys.argv[2]))
assert locks.acquire_lock("chunk-1", holder="render-a")
print("held", flush=True)
time.sleep(600)
"""


@contextmanager
def _holder(lock_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that takes chunk-1's lock and keeps it (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), str(HOLD_S)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_live_holder_keeps_the_lock_and_a_killed_one_gives_it_up(tmp_path: Path) -> None:
    lock_dir = tmp_path / ".locks"
    with _holder(lock_dir) as holder:
        info = json.loads(next(lock_dir.glob("*.lock")).read_text())
        assert info["holder"] == "render-a" and info["pid"] == holder.pid and info["expiration"]
        locks = _ExpiringFileLocks(lock_dir, HOLD_S)
        assert locks.is_locked("chunk-1")
        assert not locks.acquire_lock("chunk-1", holder="render-b", acquire_timeout=1.0)  # alive: wait
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        t0 = time.monotonic()
        assert locks.acquire_lock("chunk-1", holder="render-b", acquire_timeout=5.0)
        assert time.monotonic() - t0 < 1.0  # not the 600 s hold timeout
        assert json.loads(next(lock_dir.glob("*.lock")).read_text())["pid"] == os.getpid()
        locks.release_lock("chunk-1", holder="render-b")
        assert not locks.is_locked("chunk-1")


def test_a_lock_from_another_host_or_a_reused_pid_is_judged_correctly(tmp_path: Path) -> None:
    lock_dir = tmp_path / ".locks"
    locks = _ExpiringFileLocks(lock_dir, HOLD_S)
    assert locks.acquire_lock("chunk-2", holder="render-a")
    path = next(lock_dir.glob("*.lock"))
    info = json.loads(path.read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    other = _ExpiringFileLocks(lock_dir, HOLD_S)
    # another host's holder: never judged from here, only its expiry frees it
    path.write_text(json.dumps({**info, "host": "some-other-host", "pid": dead.pid}))
    assert other.is_locked("chunk-2")
    # this host, a pid now used by a different process (start time differs): the holder is gone
    path.write_text(json.dumps({**info, "pid": os.getppid(), "started": "0"}))  # alive, but not since tick 0
    assert not other.is_locked("chunk-2") and not path.exists()


@pytest.mark.parametrize("started", [None, "current"])
def test_the_pid_of_a_live_holder_with_its_own_start_time_is_not_taken_over(tmp_path: Path,
                                                                             started: str | None) -> None:
    from tasks.voice import _process_started

    lock_dir = tmp_path / ".locks"
    with _holder(lock_dir) as holder:
        path = next(lock_dir.glob("*.lock"))
        info = json.loads(path.read_text())
        info["started"] = _process_started(holder.pid) if started else None
        path.write_text(json.dumps(info))
        assert _ExpiringFileLocks(lock_dir, HOLD_S).is_locked("chunk-1")
