"""TTS chunk locks: a file-lock holder that dies without releasing gives the lock up at once, a live one does not;
a Redis lock is renewed while its holder lives (for at most the hold timeout) and lapses within a lease after."""

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
    with _holding(HOLDER, str(lock_dir), str(HOLD_S)) as proc:
        yield proc


@contextmanager
def _holding(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Another process running ``script`` (which prints "held" once it has the lock), killed at the end."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
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


# -- Redis (the real server at 127.0.0.1:6379; skipped where none answers) ----------------------------------
REDIS_URL = "redis://127.0.0.1:6379/0"
LEASE_S = 2.0  # renewed every 0.67 s: a holder stalled for longer than ~1.3 s would lose it

REDIS_HOLDER = """
import sys, time
from tasks.voice import _expiring_redis_locks
locks = _expiring_redis_locks(sys.argv[1], float(sys.argv[2]), lease_s=float(sys.argv[3]))
assert locks.acquire_lock(sys.argv[4], holder="render-a")
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def redis_key() -> Iterator[str]:
    import uuid

    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis answering at {REDIS_URL} ({type(exc).__name__})")
    key = f"test-chunk-{uuid.uuid4()}"
    yield key
    client.delete(f"lock:{key}")
    client.close()


def _pttl(key: str) -> int:
    import redis

    with redis.Redis.from_url(REDIS_URL) as client:
        return int(client.pttl(f"lock:{key}"))


def test_a_live_redis_holder_renews_its_lease_and_a_killed_one_gives_it_up_within_it(redis_key: str) -> None:
    from tasks.voice import _expiring_redis_locks

    with _holding(REDIS_HOLDER, REDIS_URL, str(HOLD_S), str(LEASE_S), redis_key) as proc:
        locks = _expiring_redis_locks(REDIS_URL, HOLD_S, lease_s=LEASE_S)
        # three leases later the live holder still has it: it renews (the key never carries the 600 s hold)
        assert not locks.acquire_lock(redis_key, holder="render-b", acquire_timeout=3 * LEASE_S)
        assert locks.is_locked(redis_key) and 0 < _pttl(redis_key) <= LEASE_S * 1000
        proc.kill()
        proc.wait(10)
        assert _pttl(redis_key) <= LEASE_S * 1000  # what is left of its last lease (or gone), not the hold
        assert locks.acquire_lock(redis_key, holder="render-b", acquire_timeout=10 * LEASE_S)
        assert locks.is_lock_holder(redis_key, "render-b")
        locks.release_lock(redis_key, holder="render-b")
        assert not locks.is_locked(redis_key)


def test_a_redis_lock_is_renewed_for_its_hold_timeout_and_no_longer(redis_key: str) -> None:
    from tasks.voice import _expiring_redis_locks

    locks = _expiring_redis_locks(REDIS_URL, 2 * LEASE_S, lease_s=LEASE_S)
    assert locks.acquire_lock(redis_key, holder="render-a")
    time.sleep(1.5 * LEASE_S)
    assert locks.is_lock_holder(redis_key, "render-a") and locks.is_locked(redis_key)  # renewed past one lease
    other = _expiring_redis_locks(REDIS_URL, 2 * LEASE_S, lease_s=LEASE_S)
    # a holder that never releases (hung) keeps the chunk for its hold timeout, then the lock lapses
    assert other.acquire_lock(redis_key, holder="render-b", acquire_timeout=10 * LEASE_S)
    assert other.is_lock_holder(redis_key, "render-b")
    other.release_lock(redis_key, holder="render-b")


def test_a_released_redis_lock_is_not_renewed(redis_key: str) -> None:
    from tasks.voice import _expiring_redis_locks

    locks = _expiring_redis_locks(REDIS_URL, HOLD_S, lease_s=LEASE_S)
    assert locks.acquire_lock(redis_key, holder="render-a")
    locks.release_lock(redis_key, holder="render-a")
    time.sleep(LEASE_S)  # a renewal round or more
    assert not locks.is_locked(redis_key) and _pttl(redis_key) == -2  # no key at all
    assert locks.acquire_lock(redis_key, holder="render-c", acquire_timeout=1.0)
    locks.release_lock(redis_key, holder="render-c")
