"""What the soak (bench/soak.py) runs against: a queue database, the S3 test server with its fault injector,
a background-track server, and ``deployments/serve.py`` worker processes it can kill and restart.

Postgres is chosen as the test suite chooses it (tests/pg.py): DATABASE_URL when set, else the embedded
server (pgserver) under ./.mindscript/test-pg; the soak gets a database of its own, migrated, dropped after.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.servers._http import LoopbackServer  # noqa: E402

SOAK_APP = "mindscript-soak"  # application_name of the soak's own connections (never terminated)


# -- Postgres -------------------------------------------------------------------------------------------------
def _admin(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, application_name=SOAK_APP) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


@contextmanager
def soak_database() -> Iterator[tuple[str, str]]:
    """(DSN of a fresh migrated database, admin DSN of its server); the database is dropped afterwards."""
    from psycopg.conninfo import make_conninfo

    from mindscript.queue.migrate import apply_migrations

    server_dsn = os.environ.get("DATABASE_URL")
    handle = None
    if not server_dsn:
        import pgserver

        data = ROOT / ".mindscript" / "test-pg"
        data.mkdir(parents=True, exist_ok=True)
        handle = pgserver.get_server(str(data), cleanup_mode="stop")  # stops when its last user exits
        server_dsn = handle.get_uri()
    name = f"mindscript_soak_{uuid.uuid4().hex[:10]}"
    _admin(server_dsn, f'CREATE DATABASE "{name}"')
    try:
        dsn = make_conninfo(server_dsn, dbname=name)
        apply_migrations(dsn)
        yield dsn, server_dsn
    finally:
        _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        del handle


def terminate_backends(dsn: str) -> int:
    """Drop every connection to the soak's database except the soak's own: the workers' and renders' pools."""
    rows = _admin(dsn, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                       "AND coalesce(application_name, '') <> %s", (SOAK_APP,))
    return int(rows[0][0])


# -- Prefect ------------------------------------------------------------------------------------------------------
@contextmanager
def prefect_server(home: Path, timeout_s: float = 180.0) -> Iterator[str]:
    """A temporary Prefect server (``prefect server start``, SQLite under ``home``) with all its services; yields
    its API URL. Not the test harness: that one is ephemeral and runs no repossessor (expired concurrency leases
    of killed renders are never revoked), no late-runs marking, none of what a real deployment has."""
    home.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
                "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"})
    url = f"http://127.0.0.1:{port}/api"
    with (home / "server.log").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                 str(port), "--no-ui", "--analytics-off"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start (exit {proc.poll()}); see {home / 'server.log'}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- S3 (moto) with the fault injector of tests/servers/storage_s3.py ----------------------------------------
class S3Control:
    """The moto server's control routes: arm faults, read what was injected, list what is stored."""

    def __init__(self, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"

    def arm(self, **spec: Any) -> None:
        req = urllib.request.Request(f"{self.endpoint}/_faults", data=json.dumps(spec).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10):
            pass

    def reset(self) -> None:
        self.arm(reset=True)

    def injected(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.endpoint}/_faults", timeout=30) as resp:
            return dict(json.loads(resp.read()).get("by_status", {}))

    def objects(self) -> list[tuple[str, str, int]]:
        """(bucket, key, size) of every stored object (call with faults disarmed)."""
        import boto3

        s3 = boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                            aws_access_key_id="soak", aws_secret_access_key="soak")
        try:
            out: list[tuple[str, str, int]] = []
            for bucket in s3.list_buckets().get("Buckets", []):
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
                    out.extend((bucket["Name"], o["Key"], int(o["Size"])) for o in page.get("Contents", []))
            return out
        finally:
            s3.close()


# -- the background track ---------------------------------------------------------------------------------------
class FileServer(LoopbackServer):
    """Serves one file at ``/bed.wav`` (GET) on 127.0.0.1 and counts the downloads."""

    METHODS = ("GET",)

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.downloads = 0
        self._start_http()

    @property
    def url(self) -> str:
        return f"{self.origin}/bed.wav"

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        ok = h.path == "/bed.wav"
        body = self.data if ok else b"not found"
        self.downloads += ok
        h.send_response(200 if ok else 404)
        h.send_header("Content-Type", "audio/wav" if ok else "text/plain")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


def bed_wav(seconds: float = 6.0, sample_rate: int = 22050) -> bytes:
    """A soft stereo pad (two detuned chords), 16-bit WAV: the jobs' background track."""
    import io

    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * sample_rate)) / sample_rate
    left = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) / 6
    right = sum(np.sin(2 * np.pi * f * t) for f in (220.5, 277.7, 330.1)) / 6
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, right], axis=1).astype(np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# -- workers -----------------------------------------------------------------------------------------------------
CODE_PATHS = ("mindscript", "tasks", "flows", "deployments", "supabase", "prefect.yaml", "pyproject.toml")


def render_processes(work_dir: Path, workers: list[Worker]) -> dict[str, psutil.Process]:
    """job id -> the worker's child process rendering it, found by its workspace (``<job id>-<pid>-<hex>``,
    mindscript/workspace.py). Prefect's runner may start a render as a ``multiprocessing`` spawn child that sets
    PREFECT__FLOW_RUN_ID only inside itself, so the environment does not tell; the workspace does."""
    ours = {p.pid: p for w in workers for p in w.descendants()}
    found: dict[str, psutil.Process] = {}
    for entry in work_dir.iterdir() if work_dir.is_dir() else []:
        label, _, rest = entry.name.rpartition("-")[0].rpartition("-")
        if rest.isdigit() and int(rest) in ours:
            found[label] = ours[int(rest)]
    return found


def export_code(dest: Path) -> str:
    """The committed tree (HEAD) of what a worker runs, exported to ``dest``; returns the short commit id.

    The working tree is shared with other engineers' uncommitted edits: a soak of many minutes running from it
    would import whatever half-written state it finds. serve.py puts its own root first on sys.path and in
    PYTHONPATH for its flow runs, so the export is what runs (the editable install's finder comes after)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", *CODE_PATHS], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def preflight(code: Path, env: dict[str, str], cwd: Path) -> None:
    """Load the render flow the way a flow run process does, without Prefect's placeholder fallback: an import
    error in the worker's code then says what it is instead of failing every run's parameter validation."""
    cwd.mkdir(parents=True, exist_ok=True)
    script = ("import os, sys; from prefect.flows import load_flow_from_entrypoint; "
              "load_flow_from_entrypoint(os.path.relpath(sys.argv[1], os.getcwd()) + ':render_job', "
              "use_placeholder_flow=False)")
    proc = subprocess.run([sys.executable, "-c", script, str(code / "flows" / "render.py")], cwd=cwd,
                          env={**env, "PYTHONPATH": str(code)}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the worker code in {code} does not load:\n{proc.stderr[-3000:]}")


@dataclass
class Worker:
    """One ``deployments/serve.py`` process (its own cwd and PREFECT_HOME), restartable with the same name."""

    name: str
    env: dict[str, str]
    home: Path
    code: Path = ROOT  # the project tree whose deployments/serve.py runs (a snapshot, see export_code)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.home / "worker.log"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n==== soak: start #{self.starts} of {self.name} at {time.strftime('%X')} ====\n".encode())
            out.flush()
            # its own session: the soak's terminal signals never reach it, the soak decides
            self.proc = subprocess.Popen([sys.executable, str(self.code / "deployments" / "serve.py")], cwd=self.home,
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def descendants(self) -> list[psutil.Process]:
        if not self.alive():
            return []
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill_tree(self) -> int:
        """SIGKILL the worker and every process under it at once (a lost machine); returns how many died."""
        if self.proc is None:
            return 0
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        self.exits.append(self.proc.wait(10))
        return len(procs)

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM (the graceful drain); SIGKILL of the tree if it has not exited after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            return None
        self.exits.append(code)
        return code

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
