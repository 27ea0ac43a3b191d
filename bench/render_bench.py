"""Render benchmark: the same code the flow runs, on deterministic inputs, timed in a fresh process.

    python bench/render_bench.py --duration 600 --format mp3 --json   # one render, one JSON line
    python bench/render_bench.py --compare --repeats 5                 # side by side with the ffmpeg and pydub peers
    python bench/render_bench.py --memory                              # 5, 15 and 60 minutes: peak RSS
    python bench/render_bench.py --throughput                          # renders per hour for MAX_JOBS 1, 2, 3
    python bench/render_bench.py --record --repeats 5                  # all three, appended to bench/RESULTS.md

The job: voice from a WAV file (a speech-like stand-in; a shorter job gets the voice's first seconds, as much as
fits between the lead-in and the tail), music from an MP3 pad (looped), Solfeggio 528 Hz,
binaural theta 7 Hz on a 200 Hz carrier, MP3 192 kbps CBR, LAME quality 3. Inputs are generated once into
bench/.cache/ by bench/inputs.py, in a process of their own. Each render runs in its own process so peak RSS
is the render's alone; ``master_s`` is the master stage (tones, mix, limiter, encode, verification),
``wall_s`` the whole render from layer files to the delivered file. In the ``--json`` line ``peak_rss_mb`` is
the render process's own ru_maxrss (an ffmpeg encoder it starts is a separate process of a few MB whose
ru_maxrss would count the pages it shared with Python before exec).

``--compare`` runs this render and the two peer pipelines (bench/peers.py) interleaved, each in its own
process, ``--repeats`` times, and measures each system's delivered file with ffmpeg's ebur128 filter. CPU and
peak RSS there come from wait4(2) on the child: its whole process tree (Python and its ffmpeg children).
``--throughput`` keeps N render processes busy (N = MAX_JOBS) for ``--rounds`` jobs each; a worker's render
process also starts Python and imports per job, which these processes do too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import inputs as bench_inputs  # noqa: E402
from bench._harness import ChildRun, append_section, ebur128, machine, median_spread, run_child  # noqa: E402

CACHE = bench_inputs.CACHE
HERE = Path(__file__).resolve()
PEERS = ROOT / "bench" / "peers.py"
JOB_LINE = ("Job: voice WAV (9 min speech-like, cut for shorter jobs) + looped music MP3 + Solfeggio 528 Hz + "
            "binaural 200/207 Hz, MP3 192k CBR LAME q3.")


def inputs(duration_s: float | None = None) -> tuple[Path, Path]:
    """The voice WAV (of a ``duration_s`` job) and the music MP3, generated first in another process if missing."""
    inp = bench_inputs.ensure(duration_s)
    return (bench_inputs.voice_for(duration_s) if duration_s else inp.voice), inp.music


def render_once(duration_s: float, fmt: str, output: Path | None = None) -> dict[str, object]:
    """One render in this process (call in a fresh process for a clean RSS figure)."""
    from mindscript import lame, layers, master, voice
    from mindscript.dsp import _native
    from mindscript.job import parse_job
    from mindscript.settings import Settings

    inp = bench_inputs.paths()
    voice_wav = bench_inputs.voice_for(duration_s)
    settings = Settings(max_duration_minutes=240, allow_local_assets=True)
    job = parse_job(bench_inputs.job_payload(duration_s, music=inp.music, fmt=fmt), max_duration_minutes=240)
    sr = 44100
    with tempfile.TemporaryDirectory(prefix="ms-bench-") as tmp:
        ws = Path(tmp)
        t0 = time.perf_counter()
        peak = settings.true_peak_ceiling_dbtp - voice.VOICE_PEAK_HEADROOM_DB
        # as the flow does: the voice task runs while the background and tone tasks run beside it
        with ThreadPoolExecutor(max_workers=2) as pool:
            stem_f = pool.submit(voice.prepare_recording, voice_wav, ws, sample_rate=sr, max_duration_s=3600.0,
                                 target_lufs=settings.target_lufs, peak_dbtp=peak)
            bed = layers.prepare_background(job, settings, ws, sample_rate=sr, allow_local=True)
            tones = tuple(layers.plan_tone(k, job, settings, sample_rate=sr) for k in ("solfeggio", "binaural"))
            stem = stem_f.result()
        t1 = time.perf_counter()
        plan = master.plan_master(job, settings, voice=stem, bed=bed, tone_plans=tones, sample_rate=sr)
        plan = dataclasses.replace(plan, total_frames=int(duration_s * sr))  # exactly the requested length
        out = ws / f"bench.{fmt}"
        outcome = master.master(plan, out)
        t2 = time.perf_counter()
        delivered = output or CACHE / f"bench-{int(duration_s)}s.{fmt}"
        shutil.move(out, delivered)  # the workspace (TMPDIR) may be another file system
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "duration_s": duration_s, "format": fmt, "wall_s": round(t2 - t0, 3), "layers_s": round(t1 - t0, 3),
        "master_s": round(t2 - t1, 3), "mix_encode_s": outcome.render_s, "verify_s": outcome.verify_s,
        "attempts": outcome.attempts, "peak_rss_mb": round(rss, 1),
        "lame": lame.library().split(":")[0] if fmt == "mp3" else None,  # which LAME encoded (mindscript.lame)
        "dsp": _native.kernels().split(":")[0],  # which DSP kernels ran (mindscript.dsp._native)
        "output": str(delivered),
        "lufs": outcome.quality.integrated_lufs, "true_peak_dbtp": outcome.quality.true_peak_dbtp,
    }


def render_child(duration_s: float, fmt: str = "mp3", output: Path | None = None) -> ChildRun:
    args = [str(HERE), "--duration", str(duration_s), "--format", fmt, "--json"]
    return run_child(args + (["--output", str(output)] if output else []))


def peer_child(system: str, duration_s: float) -> ChildRun:
    return run_child([str(PEERS), system, "--duration", str(duration_s), "--json"])


def _section(title: str, command: str, body: list[str]) -> str:
    return "\n".join([f"## {title}", "", f"Machine: {machine()}.", f"Command: `{command}`. {JOB_LINE}", "",
                      *body, ""])


def _emit(text: str, record: bool) -> None:
    print(text, flush=True)
    if record:
        append_section(text)


# --------------------------------------------------------------------------------------------- compare
SYSTEMS = ("render", "ffmpeg", "pydub", "floor")
SYSTEM_NAMES = {"render": "this render (bench/render_bench.py)", "ffmpeg": "ffmpeg CLI (bench/peers.py ffmpeg)",
                "pydub": "pydub (bench/peers.py pydub)", "floor": "one-core floor (bench/peers.py floor)"}
# issue 6 on its machine: the one-core floor 6.2 s, the render's target 4.5 s
FLOOR_TARGET = 4.5 / 6.2


def compare(duration_s: float, repeats: int, systems: tuple[str, ...]) -> str:
    """Each system ``repeats`` times, interleaved (the order rotates each round), each in its own process."""
    inputs(duration_s)
    runs: dict[str, list[ChildRun]] = {s: [] for s in systems}
    for r in range(repeats):
        order = systems[r % len(systems):] + systems[:r % len(systems)]
        for system in order:
            run = render_child(duration_s) if system == "render" else peer_child(system, duration_s)
            runs[system].append(run)
            print(f"round {r + 1}/{repeats} {system}: wall {run.result['wall_s']} s, process {run.process_s} s, "
                  f"user {run.user_s} s, peak RSS {run.peak_rss_mb} MB", file=sys.stderr, flush=True)
    rows, notes = [], []
    base = [float(x.result["wall_s"]) for x in runs.get("render", [])]
    for system in systems:
        rs = runs[system]
        walls = [float(x.result["wall_s"]) for x in rs]
        lufs, tp = ebur128(str(rs[-1].result["output"]))
        ratio = "1"
        if base and system != "render":
            ratios = [w / b for w, b in zip(walls, base, strict=True)]
            ratio = f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}x)"
        elif not base:
            ratio = "-"
        rows.append(f"| {SYSTEM_NAMES[system]} | {median_spread(walls)} "
                    f"| {statistics.median(x.process_s for x in rs):.2f} "
                    f"| {statistics.median(x.user_s for x in rs):.2f} | {statistics.median(x.sys_s for x in rs):.2f} "
                    f"| {max(x.peak_rss_mb for x in rs):.0f} | {lufs:.1f} | {tp:.1f} | {ratio} |")
        notes.append(f"- {system}: " + _stage_note(system, rs))
    body = [f"{duration_s / 60:g}-minute job, {repeats} run(s) of each system, interleaved.", "",
            "| system | wall s median (min-max) | process s | user CPU s | sys CPU s | peak RSS MB "
            "| LUFS (ebur128) | dBTP (ebur128) | wall / this render's (per round) |",
            "|---|---|---|---|---|---|---|---|---|", *rows, "",
            "wall: from reading the inputs to the delivered file, timed inside the process (no interpreter start "
            "or imports); process: the whole child process; CPU and peak RSS: the child's process tree "
            "(wait4); LUFS and dBTP: ffmpeg's `ebur128=peak=true` on the delivered file (last run).", "",
            "Stage medians:", *notes]
    if runs.get("render"):
        body += ["", "This render, round by round (wall s / the process tree's user + sys CPU s / the host's steal "
                 "time s, all CPUs, while it ran): " + ", ".join(
                     f"{r.result['wall_s']:.2f} / {r.user_s + r.sys_s:.2f} / "
                     f"{'-' if r.steal_s is None else f'{r.steal_s:.2f}'}" for r in runs["render"]) + "."]
    if base and runs.get("floor"):
        shares = [b / float(f.result["wall_s"]) for b, f in zip(base, runs["floor"], strict=True)]
        body += ["", "This render's wall over the one-core floor's, per round: median "
                 f"{statistics.median(shares):.3f}, max {max(shares):.3f} (issue 6's 4.5 s against its machine's "
                 f"6.2 s floor is {FLOOR_TARGET:.3f})."]
    return _section(f"Render vs peer pipelines, {duration_s / 60:g} min", "python bench/render_bench.py --compare "
                    f"--duration {duration_s:g} --repeats {repeats}", body)


def _stage_note(system: str, runs: list[ChildRun]) -> str:
    def med(key: str) -> str:
        return f"{statistics.median(float(r.result[key]) for r in runs):.2f}"

    if system == "render":
        return (f"layers {med('layers_s')} s, master {med('master_s')} s (mix+limit+encode {med('mix_encode_s')} s, "
                f"verify {med('verify_s')} s), master attempts {runs[-1].result['attempts']}, "
                f"LAME: {runs[-1].result.get('lame', '?')}, DSP kernels: {runs[-1].result.get('dsp', '?')}")
    if system == "ffmpeg":
        return (f"pass 1 (mix + loudnorm measure) {med('pass1_s')} s, pass 2 (mix + loudnorm + encode) "
                f"{med('pass2_s')} s; measured {runs[-1].result['measured_lufs']} LUFS, "
                f"{runs[-1].result['measured_tp']} dBTP, LRA {runs[-1].result['measured_lra']}; loudnorm ran in "
                f"{runs[-1].result['normalization_type']} mode")
    if system == "floor":
        return (f"decode {med('decode_s')} s, mix and tones {med('mix_s')} s, pyloudnorm + gain + 16-bit "
                f"{med('loudness_s')} s, LAME {med('encode_s')} s")
    return (f"decode {med('decode_s')} s, Sine generators {med('tones_s')} s, overlay + fades + pyloudnorm + gain "
            f"{med('mix_s')} s, export {med('export_s')} s; measured {runs[-1].result['measured_lufs']} LUFS")


# --------------------------------------------------------------------------------------------- memory
def memory(durations: tuple[float, ...]) -> str:
    rows = []
    for d in durations:
        inputs(d)
        run = render_child(d)
        r = run.result
        rows.append(f"| {d / 60:g} min | {r['wall_s']} | {r['master_s']} | {r['mix_encode_s']} | {r['peak_rss_mb']} "
                    f"| {run.peak_rss_mb:.0f} | {r['lufs']} | {r['true_peak_dbtp']} |")
        print(rows[-1], file=sys.stderr, flush=True)
    body = ["| job | wall s | master s | of which mix+limit+encode s | peak RSS MB (render process) "
            "| peak RSS MB (process tree) | LUFS | dBTP |", "|---|---|---|---|---|---|---|---|", *rows, "",
            "One run each. \"LUFS\" is the whole file's integrated loudness (the voice is held to -16; the longer "
            "jobs are mostly music and tones after the 9-minute voice)."]
    spec = ",".join(f"{d:g}" for d in durations)
    return _section("Render memory by duration", f"python bench/render_bench.py --memory --durations {spec}", body)


# --------------------------------------------------------------------------------------------- throughput
def throughput(duration_s: float, max_jobs: tuple[int, ...], rounds: int) -> str:
    """MAX_JOBS render processes kept busy: each slot renders ``rounds`` jobs back to back."""
    inputs(duration_s)
    rows = []
    for n in max_jobs:
        done: list[ChildRun] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        with tempfile.TemporaryDirectory(prefix="ms-throughput-") as tmp:

            def slot(i: int, tmp: str = tmp, done: list[ChildRun] = done, errors: list[BaseException] = errors,
                     lock: threading.Lock = lock) -> None:
                for k in range(rounds):
                    try:
                        run = render_child(duration_s, output=Path(tmp) / f"slot{i}-job{k}.mp3")
                    except BaseException as exc:  # noqa: BLE001 - reported after the others finish
                        with lock:
                            errors.append(exc)
                        return
                    with lock:
                        done.append(run)

            t0 = time.perf_counter()
            threads = [threading.Thread(target=slot, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            makespan = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"MAX_JOBS={n}: a render failed") from errors[0]
        cpu = sum(r.user_s + r.sys_s for r in done)
        per_hour = len(done) * 3600 / makespan
        lufs = [float(r.result["lufs"]) for r in done]
        rows.append(f"| {n} | {len(done)} | {makespan:.1f} | **{per_hour:.0f}** "
                    f"| {median_spread([r.process_s for r in done], 1)} "
                    f"| {median_spread([float(r.result['wall_s']) for r in done], 1)} "
                    f"| {cpu / (makespan * (os.cpu_count() or 1)):.0%} | {min(lufs)} .. {max(lufs)} "
                    f"| {max(float(r.result['true_peak_dbtp']) for r in done)} |")
        print(rows[-1], file=sys.stderr, flush=True)
    body = [f"{duration_s / 60:g}-minute jobs, voice ready on disk (as with a cached TTS voice: no provider call), "
            f"{rounds} job(s) per slot; each job is a fresh Python process running the flow's master code path.", "",
            "| MAX_JOBS | jobs | makespan s | renders per hour | job process s median (min-max) "
            "| render wall s median (min-max) | CPU busy | LUFS | max dBTP |",
            "|---|---|---|---|---|---|---|---|---|", *rows]
    spec = ",".join(str(n) for n in max_jobs)
    return _section("Throughput per worker", f"python bench/render_bench.py --throughput --duration {duration_s:g} "
                    f"--max-jobs {spec} --rounds {rounds}", body)


# --------------------------------------------------------------------------------------------- main
def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="program length in seconds")
    p.add_argument("--format", choices=("mp3", "wav"), default="mp3")
    p.add_argument("--output", type=Path, help="--json: where to put the delivered file")
    p.add_argument("--json", action="store_true", help="render once here and print one JSON line")
    p.add_argument("--compare", action="store_true", help="this render and the peers side by side")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="--compare: which systems (comma-separated)")
    p.add_argument("--repeats", type=int, default=5, help="--compare: runs of each system")
    p.add_argument("--memory", action="store_true", help="peak RSS for several durations")
    p.add_argument("--durations", default="300,900,3600", help="--memory: seconds, comma-separated")
    p.add_argument("--throughput", action="store_true", help="renders per hour for several MAX_JOBS")
    p.add_argument("--max-jobs", default="1,2,3", help="--throughput: concurrencies, comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="--throughput: jobs per slot")
    p.add_argument("--record", action="store_true",
                   help="append the sections to bench/RESULTS.md (alone: --compare --memory --throughput)")
    args = p.parse_args()
    modes = args.compare or args.memory or args.throughput
    if args.record and not modes:
        args.compare = args.memory = args.throughput = True
    if not (modes or args.record):
        inputs(args.duration)  # in another process, before anything is allocated here
        result = render_once(args.duration, args.format, args.output)
        print(json.dumps(result) if args.json else result, flush=True)
        return
    if args.compare:
        systems = tuple(s for s in args.systems.split(",") if s)
        unknown = set(systems) - set(SYSTEMS)
        if unknown:
            p.error(f"--systems: unknown {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
        _emit(compare(args.duration, args.repeats, systems), args.record)
    if args.memory:
        _emit(memory(_floats(args.durations)), args.record)
    if args.throughput:
        _emit(throughput(args.duration, tuple(int(n) for n in _floats(args.max_jobs)), args.rounds), args.record)


if __name__ == "__main__":
    main()
