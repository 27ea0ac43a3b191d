"""Bounds and locks that hold across workers: the Redis lock manager of the TTS chunk cache (the real Redis
at 127.0.0.1:6379)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mindscript.settings import get_settings
from mindscript.voice import VoiceStem
from tests.flows.test_voice import OPENAI_KEY, long_script, make_job, run
from tests.servers import openai_server as oas

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def vendor(worker_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[oas.OpenAIServer]:
    """The OpenAI wire-format server, reached in this process through the real SDK."""
    with oas.OpenAIServer(api_key=OPENAI_KEY, seconds_per_char=0.004) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("TTS_RETRY_DELAY_S", "0.01")
        monkeypatch.setenv("TTS_FALLBACK", "")
        get_settings.cache_clear()
        yield srv  # type: ignore[misc]
    get_settings.cache_clear()


# -- Redis locks for the chunk cache ------------------------------------------------------------------------
@pytest.fixture
def redis_locks(worker_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """REDIS_URL set; yields the lock commands Redis received (MONITOR) while the test ran."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis answering at {REDIS_URL} ({type(exc).__name__}): the Redis lock test needs one")
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:
            for event in monitor.listen():
                if stop.is_set():
                    return
                if "lock:tts-v1-" in event["command"]:
                    seen.append(event["command"])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.2)  # MONITOR is on before the renders start
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    get_settings.cache_clear()
    yield seen
    stop.set()
    redis.Redis.from_url(REDIS_URL).ping()  # wakes the monitor so it sees ``stop``
    watcher.join(5)
    client.close()


def test_redis_locks_make_concurrent_renders_synthesize_each_chunk_once(
        vendor: oas.OpenAIServer, worker_env: Path, redis_locks: list[str]) -> None:
    vendor.delay_s = 0.3
    script, _ = long_script(9000)
    results: list[Any] = [None, None]

    def render(i: int) -> None:
        try:
            results[i] = run(make_job(script, "openai:nova", job_id=f"r{i}"), worker_env, f"w{i}")
        except BaseException as exc:  # surfaced below
            results[i] = exc

    threads = [threading.Thread(target=render, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(r, VoiceStem) for r in results), results
    texts = [r.body["input"] for r in vendor.speech_requests()]
    assert len(texts) == len(set(texts)) == results[0].chunks  # each chunk requested once
    assert results[0].cache_hits + results[1].cache_hits == results[0].chunks
    # The locks were Redis locks, with an expiry (SET ... NX PX), one key per chunk; no lock files.
    sets = [c.split() for c in redis_locks if c.startswith("SET ")]
    assert {c[1] for c in sets} == {f"lock:{k}" for k in _chunk_keys(results[0], worker_env)}
    assert all(c[3:5] == ["NX", "PX"] and int(c[5]) > 0 for c in sets)
    assert not list((worker_env / "tts-cache" / ".locks").glob("*"))


def _chunk_keys(stem: VoiceStem, root: Path) -> set[str]:
    """Prefect's cache keys of the stem's chunk tasks: the records the SERIALIZABLE transactions wrote."""
    keys = {p.name for p in (root / "tts-cache" / ".records").iterdir()}
    assert len(keys) == stem.chunks
    return keys
