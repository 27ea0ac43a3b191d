"""A long file measured (or processed) as a few stretches at once, with the figures of one pass.

Threads are enough: libsndfile's decoders, scipy's filters and numpy's large array operations release the
GIL. Each stretch after the first starts ``preroll`` frames early so its K-weighting filter (and whatever
else carries state, e.g. a limiter) has settled by the cut, and cuts fall on whole seconds so the 100 ms
loudness steps (and 10 ms activity hops) of every stretch lie on one grid. The number of stretches is a
constant of the caller, not the machine's core count, so a file gives the same figures everywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from mindscript import audio_io
from mindscript.dsp import loudness, truepeak

T = TypeVar("T")

PREROLL_S = 1  # the K-weighting filter settles well under 1e-6 LU within a second


@dataclass(frozen=True)
class Stretch:
    """Frames ``[start, stop)`` of a file, read from ``start - preroll``."""

    start: int
    stop: int
    preroll: int

    @property
    def frames(self) -> int:
        return self.stop - self.start


def plan_stretches(frames: int, sample_rate: int, *, parts: int, min_s: float,
                   preroll_s: float = PREROLL_S) -> list[Stretch]:
    """At most ``parts`` stretches of at least ``min_s`` seconds each, cut on whole seconds."""
    n = max(1, min(parts, int(frames // (sample_rate * min_s))))
    cuts = [0, *(round(frames * i / n / sample_rate) * sample_rate for i in range(1, n)), frames]
    return [Stretch(cuts[i], cuts[i + 1], min(cuts[i], int(preroll_s * sample_rate))) for i in range(n)]


def run(fn: Callable[[Stretch], T], stretches: Sequence[Stretch], name: str = "part") -> list[T]:
    """``fn`` on every stretch, one thread each (the first in this thread); results in order."""
    if len(stretches) == 1:
        return [fn(stretches[0])]
    with ThreadPoolExecutor(max_workers=len(stretches) - 1, thread_name_prefix=name) as pool:
        rest = [pool.submit(fn, s) for s in stretches[1:]]
        first = fn(stretches[0])
        return [first, *(f.result() for f in rest)]


def join_meters(stretches: Sequence[Stretch], meters: Sequence[loudness.MeterState],
                sample_rate: int) -> loudness.MeterState:
    """One meter of the whole file from the stretches' meters (each fed from its pre-roll on)."""
    meter = meters[0]
    for stretch, part in zip(stretches[1:], meters[1:], strict=True):
        meter = loudness.meter_concat(meter, part, skip_steps=stretch.preroll * 10 // sample_rate)
    return meter


@dataclass
class Measured:
    meter: loudness.MeterState  # fed from ``start - preroll``
    peak: float  # linear true peak of ``[start, stop)`` (0.0 when not measured)
    frames: int  # frames of ``[start, stop)`` decoded


def measure_stretch(path: Path, info: audio_io.AudioInfo, stretch: Stretch, *,
                    weights: Sequence[float] | None = None, true_peak: bool = True,
                    on_block: Callable[[np.ndarray], None] | None = None,
                    blocksize: int = 1 << 16) -> Measured:
    """Meter frames ``[start - preroll, stop)`` and take the true peak of ``[start, stop)``.

    ``on_block`` sees the decoded frames of ``[start, stop)`` in order (e.g. for speech activity).
    """
    start, stop, sr = stretch.start, stretch.stop, info.sample_rate
    last = stop >= info.frames
    meter = loudness.meter_init(sr, info.channels, weights=weights)
    peak_state = truepeak.truepeak_init(info.channels) if true_peak else None
    peak = 0.0
    pos = start - stretch.preroll  # frame of the next block's first sample
    # the true peak of frames near ``stop`` needs LATENCY_FRAMES of lookahead past it (unless the file ends)
    if peak_state is None:
        end = stop
    else:
        end = info.frames if last else min(info.frames, stop + truepeak.LATENCY_FRAMES)
    tp_from = max(0, start - truepeak.LATENCY_FRAMES - 32)  # the interpolator's own warm-up
    for block in audio_io.iter_blocks(path, blocksize, start=pos, frames=end - pos):
        n = len(block)
        counted = block[: max(0, stop - pos)]
        meter = loudness.meter_update(meter, counted)
        if on_block is not None and pos + len(counted) > start:
            on_block(counted[max(0, start - pos):])
        if peak_state is not None and pos + n > tp_from:
            lo = max(0, tp_from - pos)
            first_out = peak_state.frames_out
            if tp_from + first_out >= start and pos + n <= stop:
                # every envelope value this block yields lies in [start, stop): keep only the running maximum
                # (interpolating only where it could rise), seeded with the stretch's maximum so far
                peak_state = truepeak.truepeak_update(dataclasses.replace(peak_state, max_abs=peak), block[lo:])
                peak = peak_state.max_abs
            else:
                env, peak_state = truepeak.oversampled_peaks(peak_state, block[lo:], floor=peak)
                peak = _peak_within(env, tp_from + first_out, start, stop, peak)
        pos += n
    if peak_state is not None and last:
        first_out = peak_state.frames_out
        env, peak_state = truepeak.truepeak_flush(peak_state)
        peak = _peak_within(env, tp_from + first_out, start, stop, peak)
    return Measured(meter, peak, max(0, min(pos, stop) - start))


def _peak_within(env: np.ndarray, env_start: int, start: int, stop: int, peak: float) -> float:
    lo, hi = max(0, start - env_start), min(len(env), stop - env_start)
    return max(peak, float(env[lo:hi].max())) if hi > lo else peak
