"""Secrets never leak: distinctive fake credentials, representative paths, and a grep of everything produced.

Configured: OPENAI_API_KEY, ELEVENLABS_API_KEY, SUPABASE_SERVICE_KEY, the password in DATABASE_URL, the S3
secret key. Run: renders through the queue and the flow with failing providers (OpenAI 500s, ElevenLabs
rejecting the key with a body that echoes it, as a misbehaving proxy might), stored on the Supabase Storage
and S3 protocols with signed URLs; a render that fails; the queue unreachable. Collected: every log record at
DEBUG (root, Prefect's loggers and the run logs read back from the Prefect API), exceptions, the results and
the queue rows, Prefect artifacts, events, flow- and task-run parameters and state messages, the settings'
repr and JSON. No secret may appear in any of it; a signed URL's token only in the result (the contract
hands the URL to the app) and nowhere else.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from mindscript.errors import QueueUnavailable, RenderError
from mindscript.job import parse_job
from mindscript.queue.postgres import PostgresQueue
from mindscript.settings import get_settings
from tests.servers import elevenlabs_server as els
from tests.servers import openai_server as oas
from tests.servers.process import server_process
from tests.servers.storage_supabase import SupabaseStorageServer

# Distinctive, and each with a core that would survive truncation or masking of its ends.
SECRETS = {
    "OPENAI_API_KEY": "sk-proj-LEAKCHECKopenai7f3a91c0d2e4b6a8",
    "ELEVENLABS_API_KEY": "xi-LEAKCHECKeleven5c2e8d1f0a9b3c7d",
    "SUPABASE_SERVICE_KEY": "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.LEAKCHECKsupa4e1b9c7d2f0a",
    "DATABASE_URL password": "pgLEAKCHECKpw3d8f2a6c1e9b",
    "AWS_SECRET_ACCESS_KEY": "s3LEAKCHECKsecret9a1c5e7d3b2f0e4a6c8b",
}
JOB = {"type": "render",
       "projectData": {"scriptText": "Breathe in slowly. [pause 1s] And breathe out.", "voiceRef": "openai:nova",
                       "durationMin": 0.2, "layers": {"solfeggio": {"enabled": True, "hz": 528}}},
       "outputOptions": {"format": "mp3", "quality": "low", "storageLocation": "private"}}


def _cores(secret: str) -> list[str]:
    """The secret, and the distinctive middle a partial leak would still show."""
    core = secret[secret.index("LEAKCHECK"):]
    return [secret, core[:20], core[-14:]]


class Capture(logging.Handler):
    """Every record, formatted with its exception and stack, from every logger it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record) + " " + json.dumps(
                {k: str(v) for k, v in record.__dict__.items() if k not in ("msg", "args", "exc_info")}))
        except Exception as exc:  # a record that cannot be formatted is itself a finding
            self.lines.append(f"UNFORMATTABLE {record.name}: {exc!r}")


@pytest.fixture
def debug_logs() -> Iterator[Capture]:
    """DEBUG on the root logger and on every logger that does not propagate (Prefect's), captured."""
    handler = Capture()
    root = logging.getLogger()
    loggers = [root] + [lg for lg in logging.root.manager.loggerDict.values()
                        if isinstance(lg, logging.Logger) and not lg.propagate]
    loggers += [logging.getLogger(n) for n in ("prefect", "prefect.flow_runs", "prefect.task_runs")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield handler
    for lg, level in saved:
        lg.removeHandler(handler)
        lg.setLevel(level)


@dataclass
class World:
    openai: oas.OpenAIServer
    eleven: els.ElevenLabsServer
    supa: SupabaseStorageServer
    s3_endpoint: str
    dsn: str
    workdir: Path
    texts: dict[str, str] = field(default_factory=dict)  # where -> text to grep


@pytest.fixture
def world(prefect_harness: str, worker_env: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> Iterator[World]:
    from tasks.queue import reset_queue

    key, xi = SECRETS["OPENAI_API_KEY"], SECRETS["ELEVENLABS_API_KEY"]
    dsn = make_conninfo(pg_dsn, password=SECRETS["DATABASE_URL password"])  # the test server trusts loopback
    with oas.OpenAIServer(api_key=key) as openai, els.ElevenLabsServer(api_key=xi) as eleven, \
            SupabaseStorageServer(tmp_path / "supa", SECRETS["SUPABASE_SERVICE_KEY"]) as supa, \
            server_process("tests.servers.storage_s3") as s3_port:
        env = {
            "OPENAI_API_KEY": key, "OPENAI_BASE_URL": openai.base_url,
            "ELEVENLABS_API_KEY": xi, "ELEVENLABS_BASE_URL": eleven.base_url,
            "TTS_FALLBACK": "elevenlabs,local", "TTS_RETRIES": "1", "TTS_RETRY_DELAY_S": "0.01",
            "SUPABASE_URL": supa.url, "SUPABASE_SERVICE_KEY": SECRETS["SUPABASE_SERVICE_KEY"],
            "STORAGE_BACKEND": "supabase", "STORAGE_RETRY_DELAY_S": "0.01",
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "AWS_ACCESS_KEY_ID": "leakcheck-access-id",
            "AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"],
            "DATABASE_URL": dsn, "WORKER_ID": "leak-worker", "QUEUE_PROGRESS_INTERVAL_S": "0.1",
            "ALLOW_LOCAL_ASSETS": "false",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        reset_queue()
        yield World(openai, eleven, supa, f"http://127.0.0.1:{s3_port}", dsn, worker_env)
        reset_queue()
        get_settings.cache_clear()


def _echoing_401(vendor: str, secret: str) -> Any:
    if vendor == "openai":
        return oas.error(401, f"Incorrect API key provided: {secret}.", "invalid_request_error", "invalid_api_key")
    return els.error(401, "invalid_api_key", f"Invalid API key {secret}")


def _token(url: str) -> list[str]:
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    return [v for k, v in query.items() if k in ("token", "X-Amz-Signature", "X-Amz-Security-Token")]


def _prefect_texts(run_ids: list[uuid.UUID]) -> dict[str, str]:
    """What the Prefect API holds about these runs (and everything else it has): read back over HTTP."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send what the run loggers queued
    out: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))
        assert {r.id for r in runs} == set(run_ids)
        out["flow runs (parameters, state messages)"] = json.dumps(
            [{"name": r.name, "parameters": r.parameters, "state": r.state.message if r.state else None,
              "tags": r.tags, "job_variables": r.job_variables} for r in runs], default=str)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))
        out["task runs"] = json.dumps([{"name": t.name, "inputs": t.task_inputs,
                                        "state": t.state.message if t.state else None} for t in tasks], default=str)
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)))
        assert logs, "no run logs reached the API"
        out["run logs (API)"] = "\n".join(f"{lg.name} {lg.level} {lg.message}" for lg in logs)
        artifacts = client.read_artifacts()
        assert any(a.key and a.key.startswith("render-quality-") for a in artifacts)
        out["artifacts"] = json.dumps([{"key": a.key, "data": a.data, "description": a.description}
                                       for a in artifacts], default=str)
        page, events = client.read_events(limit=50), []
        while True:
            events += [e.model_dump(mode="json") for e in page.events]
            if not page.next_page or len(events) >= 2000:
                break
            page = client.read_events_page(str(page.next_page))
        assert any(e["event"].startswith("mindscript.render.") for e in events)
        out["events"] = json.dumps(events, default=str)
    return out


def test_no_secret_in_logs_errors_results_artifacts_or_parameters(world: World, debug_logs: Capture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.ingest import ingest_queue
    from flows.render import render_job
    from tasks import ingest as ingest_tasks

    texts = world.texts
    started = time.time() - 1
    render_job.to_deployment(name="render").apply()
    queue = PostgresQueue(world.dsn)
    tokens: list[str] = []
    run_ids: list[uuid.UUID] = []
    try:
        # 1. From the queue: OpenAI answers 500 (retried, then the fallback), ElevenLabs rejects the key and
        #    echoes it; the local voice renders; stored on Supabase Storage with a signed URL (one upload 503).
        world.openai.fail_always = oas.SERVER_ERROR
        world.eleven.fail_always = _echoing_401("elevenlabs", SECRETS["ELEVENLABS_API_KEY"])
        world.supa.fail("POST", "/storage/v1/object/renders-private/", 503, 1,
                        message=f"upstream rejected apikey {SECRETS['SUPABASE_SERVICE_KEY']}")
        first = queue.enqueue(JOB)
        out = ingest_queue(max_jobs=1, deployment=ingest_tasks.RENDER_DEPLOYMENT)
        assert list(out["submitted"]) == [str(first.id)]
        row = queue.get(first.id)
        assert row is not None
        result = render_job(parse_job(row.job_document()), queue_attempt=row.attempts)
        assert result["success"] is True and result["data"]["metadata"]["tts"]["provider"] == "local"
        assert any("ElevenLabs" in w or "elevenlabs" in w for w in result["data"]["metadata"]["warnings"])
        assert world.supa.injected == 1
        tokens += _token(result["data"]["outputUrl"])
        texts["result 1"] = json.dumps(result)
        run_ids.append(uuid.UUID(out["submitted"][str(first.id)]))

        # 2. Directly through the flow, stored on S3 with a presigned URL; tones only.
        s3_job = copy.deepcopy(JOB)
        s3_job["projectData"]["layers"]["voice"] = {"enabled": False}
        monkeypatch.setenv("STORAGE_BACKEND", "s3")
        get_settings.cache_clear()
        result2 = render_job(parse_job({"id": "leak-s3", "payload": s3_job}))
        monkeypatch.setenv("STORAGE_BACKEND", "supabase")
        assert result2["success"] is True and result2["data"]["metadata"]["storage"]["backend"] == "s3"
        tokens += _token(result2["data"]["outputUrl"])
        texts["result 2"] = json.dumps(result2)

        # 3. From the queue, failing: OpenAI rejects the key and echoes it, no fallback.
        world.openai.fail_always = _echoing_401("openai", SECRETS["OPENAI_API_KEY"])
        monkeypatch.setenv("TTS_FALLBACK", "")
        get_settings.cache_clear()
        bad = queue.enqueue(JOB)
        [claimed] = queue.claim("leak-worker", 1, 60)
        with pytest.raises(RenderError) as failed:
            render_job(parse_job(claimed.job_document()), queue_attempt=claimed.attempts)
        texts["exception 3"] = f"{failed.value} {failed.value!r} {failed.value.to_dict()}"
        failed_row = queue.get(bad.id)
        assert failed_row is not None and failed_row.status == "failed" and failed_row.error

        # 4. The queue unreachable: a DSN with the password, nothing listening.
        dead = make_conninfo(world.dsn, port="1", connect_timeout="1")
        broken = PostgresQueue(dead, timeout_s=1.0)
        try:
            with pytest.raises(QueueUnavailable) as unavailable:
                broken.claim("leak-worker", 1, 60)
            texts["queue unavailable"] = f"{unavailable.value} {unavailable.value!r} {broken!r}"
        finally:
            broken.close()

        # 5. A storage upload refused for good, the body echoing the service key; printed as Prefect prints a
        #    failed task (the whole chain).
        from mindscript.services import build_storage

        world.supa.fail("POST", "/storage/v1/object/renders-private/", 403, 1, error="Unauthorized",
                        message=f"invalid signature for apikey {SECRETS['SUPABASE_SERVICE_KEY']}")
        src = world.supa.root.parent / "refused.mp3"
        src.write_bytes(b"ID3" + bytes(200))
        with pytest.raises(RenderError) as refused:
            build_storage(get_settings()).put(src, "leak/refused.mp3", content_type="audio/mpeg", public=False,
                                              sha256=hashlib.sha256(src.read_bytes()).hexdigest())
        texts["storage refused (traceback)"] = "".join(traceback.format_exception(refused.value))
        assert "HTTP 403" in texts["storage refused (traceback)"]
    finally:
        queue.close()

    # the rows as the app reads them
    with psycopg.connect(world.dsn, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT * FROM audio_job_queue").fetchall()
    texts["queue rows"] = json.dumps(rows, default=str)
    settings = get_settings()
    texts["settings"] = f"{settings!r} {settings.model_dump_json()}"

    with psycopg.connect(world.dsn, row_factory=dict_row) as conn:
        flow_runs = [r["flow_run_id"] for r in conn.execute(
            "SELECT flow_run_id FROM audio_job_queue WHERE flow_run_id IS NOT NULL").fetchall()]
    run_ids += [r for r in flow_runs if r not in run_ids]
    texts.update(_prefect_texts(run_ids))
    texts["process logs (DEBUG)"] = "\n".join(debug_logs.lines)
    texts.update(_files(started, world.workdir, _prefect_storage()))

    # the providers saw the keys (so they were really configured), and the errors really happened
    assert world.openai.requests and world.eleven.requests
    assert any(r.headers.get("xi-api-key") == SECRETS["ELEVENLABS_API_KEY"] for r in world.eleven.requests)
    assert len(tokens) == 2 and all(len(t) >= 16 for t in tokens)
    assert len(debug_logs.lines) > 100

    leaks = []
    for where, text in texts.items():
        for name, secret in SECRETS.items():
            for part in _cores(secret):
                if part in text:
                    leaks.append(f"{name} ({part[:12]}...) in {where}: ...{_around(text, part)}...")
        for token in tokens:
            if token in text and not where.startswith(("result", "queue rows")):
                leaks.append(f"signed URL token ({token[:8]}...) in {where}: ...{_around(text, token)}...")
    assert not leaks, "\n".join(leaks)


def _prefect_storage() -> Path:
    from prefect.settings import get_current_settings

    return Path(get_current_settings().results.local_storage_path)


def _files(since: float, *roots: Path) -> dict[str, str]:
    """Files written since ``since`` (workspaces, TTS cache, Prefect's persisted results), as text to grep."""
    out = {}
    for root in roots:
        for path in root.rglob("*") if root.exists() else ():
            if path.is_file() and path.stat().st_mtime >= since and path.stat().st_size < 50 << 20:
                out[f"file {path}"] = path.read_bytes().decode("latin-1")
    assert out, roots
    return out


def _around(text: str, part: str, width: int = 100) -> str:
    i = text.index(part)
    return text[max(0, i - width): i + len(part) + 20].replace("\n", " | ")
