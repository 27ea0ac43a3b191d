"""Soak under faults (issue 7): two serve.py workers, one Postgres queue, N mixed jobs, faults while they run.

    python bench/soak.py [--jobs 200] [--seed 7] [--record]      # make soak

Sets up: a database of its own (DATABASE_URL's server, else the embedded one, as the tests do), a temporary
Prefect server with all its services (``prefect server start`` on a temporary SQLite; the test harness is
ephemeral and would not revoke a killed render's concurrency leases) and the zombie-run automation
(deployments/create_automations.py; heartbeats every 30 s),
the OpenAI and ElevenLabs wire-format servers answering a fraction of requests with 429/500/503 or a stall
past TTS_TIMEOUT_S, moto's S3 (tests/servers/storage_s3.py) failing a fraction of requests with 503/500,
and a loopback server for the background track. Queues ``--jobs`` jobs (bench/soak_jobs.py: local, OpenAI
and ElevenLabs voices and tone-only programs, some with background, every 10th deliberately invalid), starts
two workers, and while they run, at random points of progress: SIGKILLs render processes, SIGKILLs one whole
worker (serve.py and every child, a lost machine) and restarts it, terminates the workers' Postgres
connections, and makes the public bucket refuse uploads for good (403 AccessDenied; renders then go to
UPLOAD_FALLBACK_BUCKET).

Then checks (bench/soak_checks.py) and prints ONE summary line: every valid job completed and every invalid
one failed naming its field; no row pending or processing; at most one Completed render flow run per job;
every completed row's object stored and no job under two keys; WORK_DIR empty; TTS requests per chunk within
(1 + TTS_RETRIES) per interrupted round. Exit 1 when a check fails. ``--record`` appends the line to
bench/RESULTS.md under "Soak".
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import soak_checks as checks  # noqa: E402
from bench.soak_env import (  # noqa: E402
    SOAK_APP,
    FileServer,
    S3Control,
    Worker,
    bed_wav,
    export_code,
    prefect_server,
    preflight,
    render_processes,
    soak_database,
    terminate_backends,
)
from bench.soak_jobs import PlannedJob, plan_jobs  # noqa: E402

OPENAI_KEY, ELEVEN_KEY = "sk-soak-not-a-key", "xi-soak-not-a-key"
BUCKETS = {"PUBLIC_BUCKET": "soak-public", "PRIVATE_BUCKET": "soak-private", "UPLOAD_FALLBACK_BUCKET": "soak-fallback"}
TTS_RETRIES, TTS_TIMEOUT_S, STALL_S = 3, 2.5, 5.0
HEARTBEAT_S, ZOMBIE_WITHIN_S = 30, 75


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(message: str) -> None:
    print(f"[soak {time.strftime('%X')}] {message}", file=sys.stderr, flush=True)


@dataclass
class FaultPlan:
    """When (fraction of jobs finished) each fault fires; drawn from the seed."""

    render_kills: list[float]
    pg_drops: list[float]
    worker_kill: float | None
    bucket_refusal: float | None
    done: dict[str, int] = field(default_factory=dict)
    killed_jobs: set[str] = field(default_factory=set)
    terminated_backends: int = 0
    restart_at: float | None = None
    last_miss_log: float = 0.0

    @classmethod
    def draw(cls, rng: random.Random, render_kills: int, pg_drops: int, worker_kill: bool,
             bucket_refusal: bool) -> FaultPlan:
        return cls(render_kills=sorted(rng.uniform(0.05, 0.8) for _ in range(render_kills)),
                   pg_drops=sorted(rng.uniform(0.1, 0.85) for _ in range(pg_drops)),
                   worker_kill=rng.uniform(0.3, 0.6) if worker_kill else None,
                   bucket_refusal=rng.uniform(0.15, 0.4) if bucket_refusal else None)

    def count(self, what: str) -> None:
        self.done[what] = self.done.get(what, 0) + 1


def worker_env(*, name: str, home: Path, shared: Path, dsn: str, api_url: str, s3: str, openai_url: str,
               eleven_url: str, max_jobs: int) -> dict[str, str]:
    from mindscript.settings import Settings

    ours = {f.upper() for f in Settings.model_fields} | {"REDIS_URL", "DATABASE_URL"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SUPABASE_", "AWS_")) and
           k.upper() not in ours}
    env.update({
        "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home / "prefect"), "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
        "DATABASE_URL": dsn, "WORKER_ID": name, "MAX_JOBS": str(max_jobs), "POLL_INTERVAL": "1000",
        "HEALTH_PORT": str(_free_port()), "SHUTDOWN_GRACE": "60000",
        "QUEUE_LEASE_S": "30", "QUEUE_BACKOFF_BASE_S": "1", "QUEUE_BACKOFF_MAX_S": "8",
        "QUEUE_PROGRESS_INTERVAL_S": "1",
        "WORK_DIR": str(shared / "work"), "TTS_CACHE_DIR": str(shared / "tts-cache"),
        "STORAGE_BACKEND": "s3", "S3_ENDPOINT_URL": s3, "S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "soak", "AWS_SECRET_ACCESS_KEY": "soak", **BUCKETS,
        "STORAGE_RETRIES": "5", "STORAGE_RETRY_DELAY_S": "0.2", "STORAGE_TIMEOUT_S": "20",
        "OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": openai_url,
        "ELEVENLABS_API_KEY": ELEVEN_KEY, "ELEVENLABS_BASE_URL": eleven_url, "ELEVENLABS_OUTPUT_FORMAT": "pcm_24000",
        "TTS_RETRIES": str(TTS_RETRIES), "TTS_RETRY_DELAY_S": "0.5", "TTS_TIMEOUT_S": str(TTS_TIMEOUT_S),
        "TTS_FALLBACK": "local",
        # short programs: the jobs last 3-12 s, so lead-in, tail and fades shrink with them
        "VOICE_LEAD_IN_S": "1", "VOICE_TAIL_S": "2", "PARAGRAPH_PAUSE_S": "0.5", "TONE_FADE_S": "1",
        "BACKGROUND_FADE_IN_S": "1", "PROGRAM_FADE_OUT_S": "1", "LOOP_CROSSFADE_S": "0.5", "ENCODE_SEGMENTS": "1",
        # the background track comes from a loopback server
        "ALLOW_HTTP_ASSETS": "true", "ASSET_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8",
    })
    return env


def read_render_runs(job_ids: set[str]) -> list[tuple[str, str, str, str]]:
    """(flow run id, job id, state name, state message) of every render_job flow run of these jobs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    out: list[tuple[str, str, str, str]] = []
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["render_job"])),
                                         limit=200, offset=offset)
            for run in page:
                job = (run.parameters or {}).get("job") or {}
                job_id = str(job.get("id")) if isinstance(job, dict) else None
                if job_id in job_ids and run.state is not None:
                    out.append((str(run.id), job_id, run.state.name, run.state.message or ""))
            if len(page) < 200:
                return out
            offset += 200


def run(args: argparse.Namespace) -> int:
    from psycopg.conninfo import make_conninfo

    from mindscript.queue.postgres import PostgresQueue
    from tests.servers import elevenlabs_server as els
    from tests.servers import openai_server as oas
    from tests.servers.elevenlabs_server import ElevenLabsServer
    from tests.servers.openai_server import OpenAIServer
    from tests.servers.process import server_process

    rng = random.Random(args.seed)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="mindscript-soak-"))
    if args.code == "head":
        code, version = root / "code", export_code(root / "code")
    else:
        code, version = ROOT, "working tree"
    log(f"workers run {version} ({code})")
    workers: list[Worker] = []
    with ExitStack() as stack:
        dsn, _server = stack.enter_context(soak_database())
        log("starting a temporary Prefect server")
        api_url = stack.enter_context(prefect_server(root / "prefect-server"))
        from prefect.settings import PREFECT_API_URL, temporary_settings

        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
        from deployments.create_automations import build as zombie_automation

        zombie_automation(ZOMBIE_WITHIN_S).create()  # type: ignore[attr-defined]
        openai = stack.enter_context(OpenAIServer(
            api_key=OPENAI_KEY, delay_s=0.1, seconds_per_char=0.06, fault_rate=args.tts_fault_rate,
            fault_replies=(oas.RATE_LIMITED, oas.SERVER_ERROR, oas.UNAVAILABLE), stall_s=STALL_S, seed=args.seed))
        eleven = stack.enter_context(ElevenLabsServer(
            api_key=ELEVEN_KEY, delay_s=0.1, seconds_per_char=0.06, fault_rate=args.tts_fault_rate,
            fault_replies=(els.BUSY, els.SERVER_ERROR, els.UNAVAILABLE), stall_s=STALL_S, seed=args.seed + 1))
        bed = stack.enter_context(FileServer(bed_wav()))
        s3 = S3Control(stack.enter_context(server_process("tests.servers.storage_s3")))
        half = args.storage_fault_rate / 2
        s3.arm(status=503, code="SlowDown", rate=half, seed=args.seed, count=10**9)
        s3.arm(status=500, code="InternalError", rate=half / (1 - half), seed=args.seed + 1, count=10**9)

        queue = PostgresQueue(make_conninfo(dsn, application_name=SOAK_APP))
        stack.callback(queue.close)
        planned = plan_jobs(args.jobs, args.seed, bed.url)
        jobs: dict[str, PlannedJob] = {}
        for job in planned:
            jobs[str(queue.enqueue(job.payload).id)] = job
        log(f"queued {len(jobs)} jobs: " + ", ".join(f"{s} {sum(j.shape == s for j in planned)}"
                                                      for s in ("local", "openai", "elevenlabs", "tones", "invalid")))

        for i in range(2):
            name = f"soak-{'ab'[i]}"
            home = root / name
            workers.append(Worker(name, worker_env(
                name=name, home=home, shared=root, dsn=dsn, api_url=api_url, s3=s3.endpoint,
                openai_url=openai.base_url, eleven_url=eleven.base_url, max_jobs=args.max_jobs), home, code))
        preflight(code, workers[0].env, workers[0].home)
        stack.callback(lambda: [w.kill_tree() for w in workers if w.alive()])
        for w in workers:
            w.start()
        t_jobs = time.monotonic()
        plan = FaultPlan.draw(rng, args.render_kills, args.pg_drops, args.worker_kill, args.bucket_refusal)
        log(f"faults planned at progress: render kills {[round(x, 2) for x in plan.render_kills]}, pg drops "
            f"{[round(x, 2) for x in plan.pg_drops]}, worker kill {plan.worker_kill and round(plan.worker_kill, 2)}, "
            f"bucket refusal {plan.bucket_refusal and round(plan.bucket_refusal, 2)}")
        unexpected = wait_and_inject(args, queue, jobs, workers, plan, s3, dsn, rng, root / "work")
        elapsed_jobs = time.monotonic() - t_jobs

        log("stopping the workers (SIGTERM)")
        exit_codes = [w.stop(120) for w in workers]
        s3.reset()
        rows = {job_id: row for job_id in jobs if (row := queue.get(uuid.UUID(job_id))) is not None}
        verdict = checks.Verdict()
        checks.check_outcomes(verdict, jobs, rows)
        checks.check_storage(verdict, jobs, rows, s3.objects())
        checks.check_flow_runs(verdict, jobs, rows, read_render_runs(set(jobs)))
        checks.check_workspaces(verdict, root / "work")
        checks.check_tts_requests(verdict, "openai", openai.by_chunk(), jobs, rows, TTS_RETRIES)
        checks.check_tts_requests(verdict, "elevenlabs", eleven.by_chunk(), jobs, rows, TTS_RETRIES)
        verdict.counts["worker_exit_not_0"] = sum(1 for c in exit_codes if c != 0) + unexpected
        storage_faults = s3.injected()
        tts_faults = {"openai": dict(openai.injected), "elevenlabs": dict(eleven.injected)}

    total_s = time.monotonic() - started
    line = summary_line(args, jobs, rows, verdict, plan, tts_faults, storage_faults, bed.downloads, elapsed_jobs,
                        total_s, version)
    for message, n in verdict.info.get("run_messages", {}).items():
        log(f"{n} x render flow run ended: {message}")
    for odd in verdict.info.get("completed_row_run_not_completed", []):
        log(f"completed row whose flow run is not Completed in Prefect: {odd}")
    for example in verdict.examples:
        log(example)
    if not verdict.passed or args.keep:
        log(f"worker logs and work dir kept under {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    print(line, flush=True)
    if args.record:
        record(line)
    return 0 if verdict.passed else 1


def wait_and_inject(args: argparse.Namespace, queue: Any, jobs: dict[str, PlannedJob], workers: list[Worker],
                    plan: FaultPlan, s3: S3Control, dsn: str, rng: random.Random, work_dir: Path) -> int:
    """Poll the queue until every job is finished (or ``--timeout``), firing the planned faults on the way.
    Returns how many times a worker exited without being told to (each is restarted)."""
    deadline = time.monotonic() + args.timeout
    last_report, unexpected = 0.0, 0
    last_finished, last_change = -1, time.monotonic()
    while True:
        stats = queue.stats()
        finished = (stats.get("completed") or 0) + (stats.get("failed") or 0) + (stats.get("cancelled") or 0)
        progress = finished / len(jobs)
        now = time.monotonic()
        if finished != last_finished:
            last_finished, last_change = finished, now
        elif now - last_change > args.stall_timeout:
            log(f"no job finished for {args.stall_timeout:.0f} s: stopping with {len(jobs) - finished} unfinished")
            return unexpected
        if now - last_report >= 20:
            last_report = now
            log(f"{finished}/{len(jobs)} finished (completed {stats.get('completed')}, failed {stats.get('failed')}, "
                f"processing {stats.get('processing')}, pending {stats.get('pending')}); faults so far {plan.done}")
        if finished >= len(jobs):
            return unexpected
        if now > deadline:
            log(f"timed out after {args.timeout} s with {len(jobs) - finished} job(s) unfinished")
            return unexpected
        for w in workers:
            if not w.alive() and not (plan.restart_at is not None and w is workers[-1]):
                unexpected += 1
                log(f"worker {w.name} exited on its own ({w.proc.returncode if w.proc else None}); restarting:\n"
                    f"{w.tail()}")
                w.start()
        if plan.restart_at is not None and now >= plan.restart_at:
            workers[-1].start()
            plan.restart_at = None
            log(f"restarted worker {workers[-1].name}")
        if plan.render_kills and progress >= plan.render_kills[0]:
            if kill_a_render(queue, workers, plan, rng, work_dir):
                plan.render_kills.pop(0)
        if plan.pg_drops and progress >= plan.pg_drops[0]:
            plan.pg_drops.pop(0)
            n = terminate_backends(dsn)
            plan.terminated_backends += n
            plan.count("pg_drop")
            log(f"terminated {n} Postgres backend(s) of the workers and renders")
        if plan.worker_kill is not None and progress >= plan.worker_kill:
            plan.worker_kill = None
            victim = workers[-1]
            held = [r for r in queue.active() if r.worker_id == victim.name]
            plan.killed_jobs.update(str(r.id) for r in held)
            n = victim.kill_tree()
            plan.count("worker_kill")
            plan.restart_at = time.monotonic() + 5
            log(f"SIGKILLed worker {victim.name} and its children ({n} processes; {len(held)} row(s) it held)")
        if plan.bucket_refusal is not None and progress >= plan.bucket_refusal:
            plan.bucket_refusal = None
            s3.arm(method="PUT", path=f"/{BUCKETS['PUBLIC_BUCKET']}/", status=403, code="AccessDenied", count=10**9)
            plan.count("bucket_refusal")
            log(f"bucket {BUCKETS['PUBLIC_BUCKET']!r} now refuses every upload (403 AccessDenied)")
        time.sleep(1.0)


def kill_a_render(queue: Any, workers: list[Worker], plan: FaultPlan, rng: random.Random, work_dir: Path) -> bool:
    """SIGKILL the process of one render under way (first attempt only: a job is not hit twice on purpose)."""
    procs = render_processes(work_dir, workers)
    active = queue.active()
    rows = [r for r in active if r.stage is not None and r.attempts == 1 and str(r.id) not in plan.killed_jobs
            and str(r.id) in procs]
    if not rows:
        if time.monotonic() - plan.last_miss_log > 15:
            plan.last_miss_log = time.monotonic()
            log(f"no render to kill yet: {len(active)} row(s) processing, "
                f"{sum(r.stage is not None for r in active)} started, {len(procs)} render process(es) found")
        return False
    row = rng.choice(rows)
    try:
        procs[str(row.id)].kill()
    except Exception:  # noqa: BLE001 - it finished in between: try another time
        return False
    plan.killed_jobs.add(str(row.id))
    plan.count("render_kill")
    log(f"SIGKILLed the render of job {row.id} (pid {procs[str(row.id)].pid}, stage {row.stage}, "
        f"attempt {row.attempts})")
    return True


def summary_line(args: argparse.Namespace, jobs: dict[str, PlannedJob], rows: dict[str, Any],
                 verdict: checks.Verdict, plan: FaultPlan, tts_faults: dict[str, dict[str, int]],
                 storage_faults: dict[str, int], bed_downloads: int, elapsed_jobs: float, total_s: float,
                 version: str) -> str:
    valid = [j for j in jobs if jobs[j].valid]
    completed = sum(1 for j in valid if rows.get(j) is not None and rows[j].status == "completed")
    invalid_failed = sum(1 for j in jobs if not jobs[j].valid and rows.get(j) is not None
                         and rows[j].status == "failed")
    retried = sum(1 for r in rows.values() if r.attempts > 1)
    fmt = lambda d: "/".join(f"{k}:{v}" for k, v in sorted(d.items())) or "0"  # noqa: E731
    info = verdict.info
    problems = " ".join(f"{k}={v}" for k, v in verdict.counts.items())
    return (f"soak ({version}): {len(jobs)} jobs ({len(valid)} valid, {len(jobs) - len(valid)} invalid) on 2 workers x "
            f"MAX_JOBS {args.max_jobs}: completed {completed}/{len(valid)}, invalid failed with their field "
            f"{invalid_failed}/{len(jobs) - len(valid)}; retried rows {retried}; "
            f"faults: render SIGKILL {plan.done.get('render_kill', 0)}, worker SIGKILL "
            f"{plan.done.get('worker_kill', 0)}, pg drops {plan.done.get('pg_drop', 0)} "
            f"({plan.terminated_backends} backends), TTS openai {fmt(tts_faults['openai'])} elevenlabs "
            f"{fmt(tts_faults['elevenlabs'])}, storage {fmt(storage_faults)}, bucket refusal "
            f"{plan.done.get('bucket_refusal', 0)} (fallback used {info.get('fallback', 0)}); "
            f"TTS requests openai {info.get('openai_requests')} for {info.get('openai_chunks')} chunks "
            f"(max {info.get('openai_max_per_chunk')}/chunk), elevenlabs {info.get('elevenlabs_requests')} for "
            f"{info.get('elevenlabs_chunks')} (max {info.get('elevenlabs_max_per_chunk')}); "
            f"background used {info.get('background_used')} ({bed_downloads} downloads), voice re-voiced by the "
            f"fallback {info.get('voice_fallbacks')}; flow runs {fmt(info.get('flow_runs', {}))}; "
            f"objects {info.get('objects')} (stray {info.get('stray_objects')}); checks: {problems}; "
            f"{elapsed_jobs:.0f} s for the jobs, {total_s:.0f} s in all -> {'PASS' if verdict.passed else 'FAIL'}")


def record(line: str) -> None:
    from bench._harness import RESULTS, machine

    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    entry = f"- {machine()}: `make soak`\n  {line}\n"
    if "\n## Soak\n" not in text:
        text = text.rstrip("\n") + "\n\n## Soak\n\n`make soak` (bench/soak.py): two serve.py workers under " \
                                   "injected faults; one summary line per run.\n\n"
        RESULTS.write_text(text + entry)
    else:
        head, _, tail = text.partition("\n## Soak\n")
        section, sep, rest = tail.partition("\n## ")
        RESULTS.write_text(head + "\n## Soak\n" + section.rstrip("\n") + "\n" + entry + (sep + rest if sep else ""))
    print(f"recorded in {RESULTS.relative_to(ROOT)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-jobs", type=int, default=2, help="MAX_JOBS of each worker")
    p.add_argument("--render-kills", type=int, default=5)
    p.add_argument("--pg-drops", type=int, default=3)
    p.add_argument("--no-worker-kill", dest="worker_kill", action="store_false")
    p.add_argument("--no-bucket-refusal", dest="bucket_refusal", action="store_false")
    p.add_argument("--tts-fault-rate", type=float, default=0.15)
    p.add_argument("--storage-fault-rate", type=float, default=0.15)
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for every job to finish")
    p.add_argument("--stall-timeout", type=float, default=600,
                   help="stop waiting when no job finished for this long (the rest are reported stuck)")
    p.add_argument("--code", choices=("head", "worktree"), default="head",
                   help="what the workers run: the committed tree (exported) or the working tree in place")
    p.add_argument("--keep", action="store_true", help="keep the worker logs and work dir")
    p.add_argument("--record", action="store_true", help="append the summary line to bench/RESULTS.md")
    args = p.parse_args(argv)
    # Ctrl-C and SIGTERM end the soak through its cleanup (workers, servers, the database), also when started in
    # the background by a shell that ignores SIGINT for its children.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
