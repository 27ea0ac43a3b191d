"""Orchestration overhead: a served render flow run (Prefect deployment, warm runner) vs. the same render called
directly.

    python bench/flow_overhead.py --runs 5 --duration 60            # temporary Prefect server (or PREFECT_API_URL)
    python bench/flow_overhead.py --runs 5 --duration 60 --record   # and append the section to bench/RESULTS.md

Served: a child process serves the ``render_job`` flow the way deployments/serve.py does (a ``Runner`` serving
the in-memory flow; each flow run runs in one of deployments/warm.py's pre-imported interpreters), under a
deployment name of its own. The runner is warmed by one run, then ``--runs``
runs of the benchmark job are triggered one after another with ``run_deployment``. For each, from the flow
run's state timestamps: flow-run wall = Scheduled (created) to Completed; the render's own time = the sum of
its stage timings (the result's ``metadata.timings``); overhead = the difference, split into pickup
(Scheduled -> Pending: the runner's poll interval, PREFECT_RUNNER_POLL_FREQUENCY), start (Pending -> Running:
process start, imports, loading the flow) and the rest (in the run, outside the stages).

Direct: the same flow called in-process (``render_job(job)``) in another warm child process, ``--runs`` times
after one warm-up call, against the same API: the render without deployment, runner or process start.

Both children persist flow results under a temporary directory (PREFECT_RESULTS_PERSIST_BY_DEFAULT) so the
served run's result, with its timings, can be read back here. The job: bench/inputs.py's, with the voice as
an uploaded recording (ALLOW_LOCAL_ASSETS) cut to the job's length, local storage in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import inputs as bench_inputs  # noqa: E402
from bench._harness import append_section, machine, median_spread  # noqa: E402

HERE = Path(__file__).resolve()
DEPLOYMENT = "render-bench-overhead"  # never the worker's own "render" deployment on a shared server
FULL_NAME = f"render_job/{DEPLOYMENT}"


def job(duration_s: float, job_id: str) -> dict[str, Any]:
    voice = bench_inputs.voice_for(duration_s)
    return bench_inputs.job_payload(duration_s, music=bench_inputs.paths().music, voice_ref=f"upload:{voice}",
                                    job_id=job_id)


def stage_sum(result: dict[str, Any]) -> float:
    return float(sum(result["data"]["metadata"]["timings"].values()))


# --------------------------------------------------------------------------------------------- children
async def serve(poll_s: int) -> None:
    """Child: serve the render flow like deployments/serve.py (no queue, no ingest) until SIGTERM."""
    from prefect.runner import Runner

    from deployments import warm
    from flows.render import render_job

    runner = Runner(name=f"bench-overhead-{os.getpid()}", limit=2, pause_on_shutdown=False, query_seconds=poll_s)
    # as serve.py: an in-memory flow (run_flow_in_subprocess) fed by warm interpreters
    await runner.aadd_flow(render_job, name=DEPLOYMENT)
    pool = warm.install(1)
    print("ready", flush=True)
    try:
        await runner.start()
    finally:
        warm.uninstall(pool)


def direct(runs: int, duration_s: float) -> None:
    """Child: the flow called in-process, one warm-up call then ``runs`` timed calls; prints one JSON line."""
    from flows.render import render_job
    from mindscript.job import parse_job

    calls = []
    for i in range(runs + 1):
        j = parse_job(job(duration_s, f"overhead-direct-{i}"))
        t0 = time.perf_counter()
        result = render_job(j)
        wall = time.perf_counter() - t0
        calls.append({"wall_s": round(wall, 3), "stages_s": round(stage_sum(result), 3),
                      "timings": result["data"]["metadata"]["timings"]})
    print(json.dumps({"warmup": calls[0], "calls": calls[1:]}), flush=True)


# --------------------------------------------------------------------------------------------- parent
def child_env(tmp: Path, api_url: str, poll_s: int) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "SUPABASE_")) and k not in ("DATABASE_URL", "REDIS_URL")}
    return {**keep,
            "PREFECT_API_URL": api_url, "PREFECT_HOME": str(tmp / "prefect-home"),
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "PREFECT_LOCAL_STORAGE_PATH": str(tmp / "results"),
            "PREFECT_RUNNER_POLL_FREQUENCY": str(poll_s), "PREFECT_LOGGING_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            "WORK_DIR": str(tmp / "work"), "STORAGE_DIR": str(tmp / "output"), "STORAGE_BACKEND": "local",
            "TTS_CACHE_DIR": str(tmp / "tts-cache"), "ALLOW_LOCAL_ASSETS": "true", "WORKER_ID": "bench-overhead"}


async def served_run(duration_s: float, job_id: str) -> dict[str, float]:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    run = await run_deployment(FULL_NAME, parameters={"job": job(duration_s, job_id)}, timeout=1800,
                               poll_interval=0.5, as_subflow=False)  # type: ignore[misc]
    if run.state is None or not run.state.is_completed():
        raise RuntimeError(f"flow run {run.id} ended {run.state!r}")
    async with get_client() as client:
        states = await client.read_flow_run_states(run.id)
    first: dict[str, float] = {}
    for s in sorted(states, key=lambda s: s.timestamp):
        first.setdefault(s.type.value, s.timestamp.timestamp())
    result = await run.state.aresult()  # type: ignore[union-attr]
    created, pending, running, done = (first[k] for k in ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED"))
    stages = stage_sum(result)
    return {"wall_s": done - created, "stages_s": stages, "overhead_s": done - created - stages,
            "pickup_s": pending - created, "start_s": running - pending, "in_run_s": done - running - stages,
            "timings": result["data"]["metadata"]["timings"]}


def measure(runs: int, duration_s: float, poll_s: int) -> str:
    bench_inputs.ensure(duration_s)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ms-flow-overhead-")))
        api_url = os.environ.get("PREFECT_API_URL")
        server = "PREFECT_API_URL"
        if not api_url:
            from prefect.settings import PREFECT_API_URL
            from prefect.testing.utilities import prefect_test_harness

            t0 = time.perf_counter()
            stack.enter_context(prefect_test_harness(server_startup_timeout=180))
            api_url = str(PREFECT_API_URL.value())
            server = f"temporary Prefect server (started in {time.perf_counter() - t0:.0f} s)"
        from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

        # where the children persist flow results: this process reads the served runs' results from there
        stack.enter_context(temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: tmp / "results"}))
        env = child_env(tmp, api_url, poll_s)
        log = (tmp / "serve.log").open("wb")
        stack.callback(log.close)
        proc = subprocess.Popen([sys.executable, str(HERE), "--serve", "--poll-seconds", str(poll_s)], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=log)
        stack.callback(_stop, proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the serving process did not start:\n{(tmp / 'serve.log').read_text()[-3000:]}")

        async def served() -> tuple[dict[str, float], list[dict[str, float]]]:
            warm = await served_run(duration_s, "overhead-warmup")
            out = []
            for i in range(runs):
                out.append(await served_run(duration_s, f"overhead-{i}"))
                print(f"served run {i + 1}/{runs}: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in out[-1].items() if k != "timings"),
                      file=sys.stderr, flush=True)
            return warm, out

        warm, served_runs = asyncio.run(served())
        d = subprocess.run([sys.executable, str(HERE), "--direct", str(runs), "--duration", str(duration_s)],
                           cwd=ROOT, env=env, capture_output=True, text=True)
        if d.returncode != 0:
            raise RuntimeError(f"direct calls failed:\n{d.stderr[-3000:]}")
        direct_out = json.loads(d.stdout.strip().splitlines()[-1])
    return report(runs, duration_s, poll_s, server, warm, served_runs, direct_out)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def report(runs: int, duration_s: float, poll_s: int, server: str, warm: dict[str, float],
           served: list[dict[str, float]], direct_out: dict[str, Any]) -> str:
    def col(rows: list[dict[str, float]], key: str) -> list[float]:
        return [float(r[key]) for r in rows]

    calls = direct_out["calls"]
    served_wall = statistics.median(col(served, "wall_s"))
    direct_wall = statistics.median(col(calls, "wall_s"))
    no_pickup = [r["wall_s"] - r["pickup_s"] for r in served]
    rows = [
        f"| served: flow-run wall (Scheduled -> Completed) | {median_spread(col(served, 'wall_s'))} |",
        f"| served: the render's stage timings | {median_spread(col(served, 'stages_s'))} |",
        f"| **served: overhead** (wall - stages) | **{median_spread(col(served, 'overhead_s'))}** |",
        f"| of which pickup (Scheduled -> Pending; poll every {poll_s} s) | {median_spread(col(served, 'pickup_s'))} |",
        f"| of which start (Pending -> Running: process, imports, flow load) | "
        f"{median_spread(col(served, 'start_s'))} |",
        f"| of which in the run, outside the stages | {median_spread(col(served, 'in_run_s'))} |",
        f"| served: flow-run wall without the pickup (Pending -> Completed) | {median_spread(no_pickup)} |",
        f"| direct: `render_job(job)` in a warm process, wall | {median_spread(col(calls, 'wall_s'))} |",
        f"| direct: the render's stage timings | {median_spread(col(calls, 'stages_s'))} |",
        f"| direct: wall - stages (the flow engine in-process) | "
        f"{median_spread([c['wall_s'] - c['stages_s'] for c in calls])} |",
        f"| **served wall - direct wall** (medians) | **{served_wall - direct_wall:.2f}** |",
        f"| served wall without pickup - direct wall (medians) | {statistics.median(no_pickup) - direct_wall:.2f} |",
    ]
    stages = sorted({k for r in (*served, *calls) for k in r["timings"]},
                    key=lambda k: -statistics.median(float(r["timings"].get(k, 0.0)) for r in served))
    per_stage = ["", "Stage by stage (the render's own timings), medians:", "",
                 "| stage | served s | direct s |", "|---|---|---|",
                 *(f"| {k} | {statistics.median(float(r['timings'].get(k, 0.0)) for r in served):.2f} | "
                   f"{statistics.median(float(c['timings'].get(k, 0.0)) for c in calls):.2f} |" for k in stages)]
    body = [f"{duration_s / 60:g}-minute job, {runs} served runs after one warm-up run "
            f"(warm-up: wall {warm['wall_s']:.2f} s, overhead {warm['overhead_s']:.2f} s), then {runs} direct calls "
            f"after one warm-up call (wall {direct_out['warmup']['wall_s']:.2f} s). Server: {server}.", "",
            "| measure | s, median (min-max) |", "|---|---|", *rows, *per_stage]
    return "\n".join([f"## Orchestration overhead (served flow run vs direct call), {duration_s / 60:g} min", "",
                      f"Machine: {machine()}.",
                      f"Command: `python bench/flow_overhead.py --runs {runs} --duration {duration_s:g} "
                      f"--poll-seconds {poll_s}`.", "", *body, ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="served runs and direct calls, each after a warm-up")
    p.add_argument("--duration", type=float, default=60.0, help="the job's length in seconds")
    p.add_argument("--poll-seconds", type=int, default=1,
                   help="the runner's poll interval (serve.py polls every second; Prefect's default is 10 s)")
    p.add_argument("--record", action="store_true", help="append the section to bench/RESULTS.md")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--direct", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # a temporary server: no telemetry
    if args.poll_seconds is None:
        from prefect.settings import get_current_settings

        args.poll_seconds = int(get_current_settings().runner.poll_frequency)
    if args.serve:
        asyncio.run(serve(args.poll_seconds))
    elif args.direct is not None:
        direct(args.direct, args.duration)
    else:
        text = measure(args.runs, args.duration, args.poll_seconds)
        print(text, flush=True)
        if args.record:
            append_section(text)


if __name__ == "__main__":
    main()
