"""Bounds and locks that hold across workers: the Prefect global concurrency limit per provider (two worker
processes against one Prefect API and one vendor server) and the Redis lock manager of the TTS chunk cache
(the real Redis at 127.0.0.1:6379)."""

# ruff: noqa: F811 - the tests take test_voice's `openai` fixture (imported below) as a parameter
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mindscript.settings import get_settings
from mindscript.voice import VoiceStem
from tests.conftest import ROOT
from tests.flows.test_voice import (
    OPENAI_KEY,
    SENTENCES,
    make_job,
    openai,  # noqa: F401 - the vendor-server fixture, shared with test_voice
    render_concurrently_once_each,
    run,
)
from tests.servers import openai_server as oas

REDIS_URL = "redis://127.0.0.1:6379/0"


# -- the provider bound across worker processes -------------------------------------------------------------
def _script(tag: str, n: int) -> str:
    """``n`` distinct sentences (about two per chunk at TTS_CHUNK_SIZE=120), marked with ``tag``."""
    return " ".join(f"{SENTENCES[i % len(SENTENCES)][:-1]}, {tag} {i}." for i in range(n))


class GatedOpenAI(oas.OpenAIServer):
    """Holds each request (counted as in flight) until every worker has sent one, or ``hold_s`` passed once:
    the workers' requests overlap however much their start-up times differ on a loaded machine."""

    def __init__(self, tags: tuple[str, ...], hold_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tags, self.hold_s = tags, hold_s
        self.opened = threading.Event()
        self._seen: set[str] = set()
        self._seen_lock = threading.Lock()

    def handle(self, req: Any) -> Any:
        text = req.body.get("input", "") if isinstance(req.body, dict) else ""
        with self._seen_lock:
            self._seen.update(t for t in self.tags if f", {t} " in text)
            if self._seen == set(self.tags):
                self.opened.set()
        self.opened.wait(self.hold_s)
        self.opened.set()  # after one timeout the gate stays open
        return super().handle(req)


def _workers(tmp: Path, api_url: str, server: oas.OpenAIServer, scripts: dict[str, str],
             extra_env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Run one ``tests.flows.voice_worker`` process per script at the same moment; their VoiceStem dicts."""
    go = tmp / "go"
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for tag, script in scripts.items():
            home = tmp / tag
            home.mkdir()
            job = tmp / f"{tag}.json"
            job.write_text(json.dumps({"id": f"shared-{tag}", "payload": {"projectData": {
                "scriptText": script, "voiceRef": "openai:nova", "durationMin": 30}}}))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TTS_", "OPENAI_"))}
            env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(home / "prefect"), PYTHONPATH=str(ROOT),
                       PYTHONUNBUFFERED="1", OPENAI_API_KEY=OPENAI_KEY, OPENAI_BASE_URL=server.base_url,
                       TTS_FALLBACK="", TTS_CHUNK_SIZE="120", TTS_RETRY_DELAY_S="0.01",
                       WORK_DIR=str(home / "work"), STORAGE_DIR=str(home / "out"),
                       TTS_CACHE_DIR=str(home / "tts-cache"),  # another host: its own cache, records and locks
                       **extra_env)
            procs[tag] = subprocess.Popen(
                [sys.executable, "-m", "tests.flows.voice_worker", str(job), str(home / "ws"), str(go)],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for tag, proc in procs.items():
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "READY", f"{tag}: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        go.touch()
        results: dict[str, dict[str, Any]] = {}
        for tag, proc in procs.items():
            out, err = proc.communicate(timeout=300)
            lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
            assert proc.returncode == 0 and lines, f"{tag} exited {proc.returncode}: {err[-3000:]}"
            results[tag] = json.loads(lines[-1][len("RESULT "):])
        return results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


@pytest.mark.parametrize("global_limits", [True, False], ids=["global-limit", "per-process-only"])
def test_two_worker_processes_share_the_provider_limit(prefect_server: str, worker_env: Path,
                                                        global_limits: bool) -> None:
    """Two workers, TTS_CONCURRENCY_OPENAI=3 each: with the global limit the vendor never sees more than 3
    requests at once while both render; without it (the control) it sees up to 6.

    Only the control holds requests at the vendor until both workers have sent one. Under the global limit a
    held request keeps its slot: the other worker is refused, and Prefect's server answers its retries with
    a Retry-After that grows with the limit's average slot occupancy (the hold), so it could wait until the
    first worker had finished. There each worker sends twice as many chunks instead, for its retries to land
    while the other still renders."""
    n = 48 if global_limits else 24
    hold_s = 0.0 if global_limits else 10.0
    with GatedOpenAI(("alpha", "beta"), hold_s, api_key=OPENAI_KEY, seconds_per_char=0.002) as server:
        server.delay_s = 0.5
        results = _workers(worker_env, prefect_server, server, {"alpha": _script("alpha", n),
                                                                "beta": _script("beta", n)},
                           {"TTS_CONCURRENCY_OPENAI": "3", "TTS_GLOBAL_LIMITS": str(global_limits).lower()})
        requests = server.speech_requests()
        peak = server.max_active
    chunks = [r["chunks"] for r in results.values()]
    assert all(r["provider"] == "openai" and r["cache_hits"] == 0 for r in results.values()), results
    assert chunks[0] >= 8 and len(requests) == sum(chunks)
    starts = {tag: [r.at for r in requests if f", {tag} " in r.body["input"]] for tag in results}
    # Both workers were sending at the same time (else no bound would be tested): the windows overlap.
    assert max(min(s) for s in starts.values()) < min(max(s) for s in starts.values())
    if global_limits:
        assert peak == 3, f"{peak} requests in flight at the vendor with a global limit of 3"
    else:
        assert peak > 3, f"control: only {peak} in flight without the global limit, so the test cannot tell"


def test_limit_is_created_and_resized_from_settings(openai: oas.OpenAIServer, worker_env: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("TTS_CHUNK_SIZE", "120")
    for size in ("5", "2"):
        monkeypatch.setenv("TTS_CONCURRENCY_OPENAI", size)
        get_settings.cache_clear()
        run(make_job(_script(f"size{size}", 4), "openai:nova"), worker_env, f"ws{size}")
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name("tts-openai")
        assert limit.limit == int(size) and limit.active and limit.active_slots == 0  # every slot released


def test_deleted_limit_falls_back_to_the_process_bound(openai: oas.OpenAIServer, worker_env: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """An operator deletes the limit while the worker runs: requests still go out, bounded per process."""
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("TTS_CHUNK_SIZE", "120")
    monkeypatch.setenv("TTS_CONCURRENCY_OPENAI", "2")
    get_settings.cache_clear()
    run(make_job(_script("before", 2), "openai:nova"), worker_env, "a")  # this process now knows the limit
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name("tts-openai")
    openai.delay_s = 0.2
    stem = run(make_job(_script("after", 12), "openai:nova"), worker_env, "b")
    assert stem.chunks >= 5 and stem.cache_hits == 0 and openai.max_active == 2
    assert "do not exist" in caplog.text


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
        openai: oas.OpenAIServer, worker_env: Path, redis_locks: list[str]) -> None:
    results = render_concurrently_once_each(openai, worker_env, "r")
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
