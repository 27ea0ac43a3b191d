"""DSP primitive benchmark: CPU time of the meter, true peak, limiter and voice-stem preparation.

    python bench/dsp_bench.py                 # every primitive, 10 minutes of stereo, median of 3 runs
    python bench/dsp_bench.py --only limiter --repeat 5 --json

The audio is deterministic (a music-like mix of sines, noise bursts and a gated "voice", 44.1 kHz stereo,
scaled so the limiter has work on a few percent of the frames). It is generated once as a 96 s pool and fed
cyclically in 65536-frame blocks (the master's block size) until 10 minutes have passed, so generation is
not timed and memory stays small. ``prepare_recording`` runs on the 9-minute voice WAV that
``bench/render_bench.py`` generates into bench/.cache/. Figures are process CPU seconds (medians) and are
meant for before/after comparisons on one machine, not for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SR = 44100
BLOCK = 1 << 16
POOL_BLOCKS = 64
VOICE_WAV = ROOT / "bench" / ".cache" / "voice.wav"  # the 9-minute speech-like voice of the render benchmark


def _pool() -> np.ndarray:
    """96 s of deterministic music-like stereo float32 (the same on every run and machine)."""
    rng = np.random.default_rng(20240601)
    n = BLOCK * POOL_BLOCKS
    t = np.arange(n) / SR
    x = np.zeros((n, 2))
    x[:, 0] += 0.25 * np.sin(2 * np.pi * 110.0 * t) * (1.0 + np.sin(2 * np.pi * 0.13 * t)) / 2
    x[:, 1] += 0.25 * np.sin(2 * np.pi * 164.8 * t) * (1.0 + np.cos(2 * np.pi * 0.11 * t)) / 2
    x += 0.08 * np.sin(2 * np.pi * 3150.0 * t + 0.3)[:, None]
    x += 0.02 * rng.standard_normal((n, 2))
    voice = (np.sin(2 * np.pi * 0.21 * t) > 0.2) * np.sin(2 * np.pi * 220.0 * t) * 0.35
    x += voice[:, None]
    bursts = (np.sin(2 * np.pi * 0.07 * t) > 0.93)[:, None]  # loud passages: the limiter works here
    x += bursts * 0.6 * rng.standard_normal((n, 2))
    return (x * 0.36).astype(np.float32)


def _blocks(pool: np.ndarray, seconds: float) -> Iterator[np.ndarray]:
    total = int(seconds * SR)
    for k, start in enumerate(range(0, total, BLOCK)):
        i = (k % POOL_BLOCKS) * BLOCK
        yield pool[i : i + min(BLOCK, total - start)]


def bench_meter(pool: np.ndarray, seconds: float) -> float:
    from mindscript.dsp import loudness

    state = loudness.meter_init(SR, 2)
    for block in _blocks(pool, seconds):
        state = loudness.meter_update(state, block)
    return loudness.meter_result(state).integrated_lufs


def bench_truepeak(pool: np.ndarray, seconds: float) -> float:
    from mindscript.dsp import truepeak

    state = truepeak.truepeak_init(2)
    for block in _blocks(pool, seconds):
        state = truepeak.truepeak_update(state, block)
    return truepeak.truepeak_db(state)


def bench_envelope(pool: np.ndarray, seconds: float) -> float:
    """The full 4x-oversampled envelope (every frame), as a plain true-peak follower returns it."""
    from mindscript.dsp import truepeak

    state = truepeak.truepeak_init(2)
    top = 0.0
    for block in _blocks(pool, seconds):
        env, state = truepeak.oversampled_peaks(state, block)
        top = max(top, float(env[::4096].max()))
    return top


def bench_limiter(pool: np.ndarray, seconds: float) -> float:
    from mindscript.dsp import limiter

    state = limiter.limiter_init(limiter.LimiterParams(sample_rate=SR, ceiling_dbtp=-1.5), 2)
    total = 0.0
    for block in _blocks(pool, seconds):
        out, state = limiter.limiter_process(state, block)
        total += float(out[::997, 0].sum())  # touch the output
    out, state = limiter.limiter_flush(state)
    return total


def bench_prepare_recording(pool: np.ndarray, seconds: float) -> float:
    from mindscript import voice

    if not VOICE_WAV.exists():
        raise SystemExit(f"{VOICE_WAV.relative_to(ROOT)} is missing: run bench/render_bench.py once to generate it")
    voice_wav = VOICE_WAV
    with tempfile.TemporaryDirectory(prefix="ms-dsp-bench-") as tmp:
        stem = voice.prepare_recording(voice_wav, Path(tmp), sample_rate=SR, max_duration_s=3600.0,
                                       target_lufs=-16.0, peak_dbtp=-1.0 - voice.VOICE_PEAK_HEADROOM_DB)
    return stem.measured_lufs


BENCHES: dict[str, Callable[[np.ndarray, float], float]] = {
    "meter": bench_meter,
    "truepeak": bench_truepeak,
    "envelope": bench_envelope,
    "limiter": bench_limiter,
    "prepare_recording": bench_prepare_recording,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BENCHES), action="append", help="run only these (repeatable)")
    parser.add_argument("--seconds", type=float, default=600.0, help="audio duration for the primitives")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = parser.parse_args()
    import mindscript.dsp  # noqa: F401  (imports are not part of any timing)
    import mindscript.voice  # noqa: F401

    pool = _pool()
    rows: dict[str, dict[str, float]] = {}
    for name in args.only or list(BENCHES):
        fn = BENCHES[name]
        cpu, wall, value = [], [], 0.0
        for _ in range(args.repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            value = fn(pool, args.seconds)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        rows[name] = {"cpu_s": round(statistics.median(cpu), 3), "cpu_min_s": round(min(cpu), 3),
                      "wall_s": round(statistics.median(wall), 3), "value": round(value, 4)}
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'primitive':<20}{'cpu median s':>14}{'cpu min s':>11}{'wall s':>9}  value")
    for name, row in rows.items():
        print(f"{name:<20}{row['cpu_s']:>14.3f}{row['cpu_min_s']:>11.3f}{row['wall_s']:>9.3f}  {row['value']}")


if __name__ == "__main__":
    main()
