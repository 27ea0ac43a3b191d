"""Render benchmark: the same code the flow runs, on deterministic inputs, timed in a fresh process.

    python bench/render_bench.py --duration 600 --format mp3 --json   # one render, one JSON line
    python bench/render_bench.py --record                             # the `make bench` suite

The job: voice from a WAV file (a speech-like stand-in), music from an MP3 pad (looped), Solfeggio 528 Hz,
binaural theta 7 Hz on a 200 Hz carrier. Inputs are generated once into bench/.cache/. Each render runs in
its own process so peak RSS is the render's alone; ``master_s`` is the master stage (tones, mix, limiter,
encode, verification), ``wall_s`` the whole render from layer files to the delivered file. Peak RSS is the
Python process's (the ffmpeg encoder is a separate process of a few MB; its ``ru_maxrss`` would count the
pages it shared with Python before exec, so it is not reported).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "RESULTS.md"


def inputs() -> tuple[Path, Path]:
    """Generate (once) a 9-minute speech-like voice WAV and a 90 s music MP3."""
    from examples.make_assets import ambient_pad, speech_like, write_mp3
    from mindscript import audio_io

    CACHE.mkdir(parents=True, exist_ok=True)
    voice, music = CACHE / "voice.wav", CACHE / "music.mp3"
    if not voice.exists():
        audio_io.write_wav_f32(voice, speech_like(540.0), 44100)
    if not music.exists():
        write_mp3(music, ambient_pad(90.0))
    return voice, music


def render_once(duration_s: float, fmt: str) -> dict[str, object]:
    """One render in this process (call in a fresh process for a clean RSS figure)."""
    from mindscript import layers, master, voice
    from mindscript.job import parse_job
    from mindscript.settings import Settings

    voice_wav, music = inputs()
    settings = Settings(max_duration_minutes=240, allow_local_assets=True)
    job = parse_job({"id": "bench", "payload": {
        "projectData": {"durationMin": duration_s / 60, "layers": {
            "voice": {"enabled": True}, "background": {"enabled": True, "trackUrl": str(music)},
            "solfeggio": {"enabled": True, "hz": 528},
            "binaural": {"enabled": True, "band": "theta", "beatHz": 7, "carrierHz": 200}}},
        "outputOptions": {"format": fmt, "quality": "high"}}}, max_duration_minutes=240)
    sr = 44100
    with tempfile.TemporaryDirectory(prefix="ms-bench-") as tmp:
        ws = Path(tmp)
        t0 = time.perf_counter()
        peak = settings.true_peak_ceiling_dbtp - voice.VOICE_PEAK_HEADROOM_DB
        stem = voice.prepare_recording(voice_wav, ws, sample_rate=sr, max_duration_s=3600.0,
                                       target_lufs=settings.target_lufs, peak_dbtp=peak)
        bed = layers.prepare_background(job, settings, ws, sample_rate=sr, allow_local=True)
        tones = tuple(layers.plan_tone(k, job, settings, sample_rate=sr) for k in ("solfeggio", "binaural"))
        t1 = time.perf_counter()
        plan = master.plan_master(job, settings, voice=stem, bed=bed, tone_plans=tones, sample_rate=sr)
        plan = dataclasses.replace(plan, total_frames=int(duration_s * sr))  # voice is cut for short runs
        out = ws / f"bench.{fmt}"
        outcome = master.master(plan, out)
        t2 = time.perf_counter()
        delivered = CACHE / f"bench-{int(duration_s)}s.{fmt}"
        os.replace(out, delivered)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "duration_s": duration_s, "format": fmt, "wall_s": round(t2 - t0, 3), "layers_s": round(t1 - t0, 3),
        "master_s": round(t2 - t1, 3), "mix_encode_s": outcome.render_s, "verify_s": outcome.verify_s,
        "attempts": outcome.attempts, "peak_rss_mb": round(rss, 1),
        "output": str(delivered),
        "lufs": outcome.quality.integrated_lufs, "true_peak_dbtp": outcome.quality.true_peak_dbtp,
    }


def run_child(duration_s: float, fmt: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, __file__, "--duration", str(duration_s), "--format", fmt, "--json"],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def record(repeats: int) -> None:
    inputs()
    rows = []
    for duration, fmt, n in ((600, "mp3", repeats), (900, "mp3", 1), (300, "mp3", 1), (3600, "mp3", 1)):
        runs = [run_child(duration, fmt) for _ in range(n)]
        walls = [float(r["wall_s"]) for r in runs]
        masters = [float(r["master_s"]) for r in runs]
        mixes = [float(r["mix_encode_s"]) for r in runs]
        last = runs[-1]
        spread = f"{statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f})"
        rows.append(f"| {duration / 60:g} min {fmt} | {spread} "
                    f"| {statistics.median(masters):.2f} | {statistics.median(mixes):.2f} "
                    f"| {max(float(r['peak_rss_mb']) for r in runs):.0f} "
                    f"| {last['lufs']} | {last['true_peak_dbtp']} | {n} |")
        print(rows[-1], flush=True)
    cpu = platform.processor() or platform.machine()
    section = "\n".join([
        f"## {date.today().isoformat()}: render core (`make bench`)",
        "",
        f"Machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}. Command: `make bench`.",
        "Job: voice WAV + looped music MP3 + Solfeggio 528 Hz + binaural 200/207 Hz, MP3 192k CBR LAME q3.",
        "",
        "| job | wall s median (min-max) | master s | of which mix+limit+encode s | peak RSS MB | LUFS | dBTP | runs |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    RESULTS.write_text(text.rstrip("\n") + "\n\n" + section)
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="program length in seconds")
    p.add_argument("--format", choices=("mp3", "wav"), default="mp3")
    p.add_argument("--json", action="store_true", help="render once here and print one JSON line")
    p.add_argument("--record", action="store_true", help="run the suite and append to bench/RESULTS.md")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.record:
        record(args.repeats)
    else:
        result = render_once(args.duration, args.format)
        print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()
