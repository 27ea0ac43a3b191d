"""Sidechain ducking of music under speech, on a coarse hop grid (default 10 ms).

Speech activity is one flag per hop (hop RMS over a threshold). The duck curve is one gain per hop: short
gaps between words are bridged so the music does not pump, then the gain reduction (in dB) follows the
activity with exponential attack and release time constants. Per-sample gains are a linear interpolation
of the per-hop curve at absolute frame indices, so blockwise rendering equals one-shot rendering.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ._checks import as_frames, check_finite, check_frames, check_sample_rate
from .gain import db_to_gain

__all__ = ["DuckParams", "duck_curve", "duck_gain_block", "speech_activity"]

_SNAP_DB = 1e-3


@dataclass(frozen=True)
class DuckParams:
    """Ducking settings.

    Attributes:
        depth_db: gain reduction of the music while speech is active, in dB (>= 0).
        attack_ms: time constant of the reduction when speech starts.
        release_ms: time constant of the recovery after speech ends.
        threshold_db: hop RMS (dBFS, a full-scale sine is -3 dBFS) above which a hop counts as speech.
        hop_ms: analysis hop.
        hold_ms: gaps in speech shorter than this (pauses between words) keep the music ducked.
    """

    depth_db: float = 8.0
    attack_ms: float = 150.0
    release_ms: float = 900.0
    threshold_db: float = -45.0
    hop_ms: float = 10.0
    hold_ms: float = 300.0

    def __post_init__(self) -> None:
        check_finite(self.threshold_db, "threshold_db")
        if check_finite(self.depth_db, "depth_db") < 0.0:
            raise ValueError(f"depth_db must be >= 0, got {self.depth_db!r}")
        for name in ("attack_ms", "release_ms", "hop_ms"):
            if check_finite(getattr(self, name), name) <= 0.0:
                raise ValueError(f"{name} must be > 0 ms, got {getattr(self, name)!r}")
        if check_finite(self.hold_ms, "hold_ms") < 0.0:
            raise ValueError(f"hold_ms must be >= 0 ms, got {self.hold_ms!r}")

    def hop_frames(self, sample_rate: int) -> int:
        """The hop in frames at ``sample_rate`` (at least 1)."""
        return max(1, round(self.hop_ms * check_sample_rate(sample_rate) / 1000.0))


def speech_activity(
    voice: np.ndarray, sample_rate: int, hop_frames: int, *, threshold_db: float = DuckParams.threshold_db
) -> np.ndarray:
    """One bool per hop of ``hop_frames``: is the RMS of the hop (all channels) above ``threshold_db`` dBFS?

    A final partial hop is measured over the frames it has. Blocks whose lengths are multiples of
    ``hop_frames`` can be analysed separately and concatenated: the result equals the one-shot result.
    """
    check_sample_rate(sample_rate)
    x = as_frames(voice, "voice")
    hop_frames = check_frames(hop_frames, "hop_frames", minimum=1)
    threshold_db = check_finite(threshold_db, "threshold_db")
    n = x.shape[0]
    n_hops = -(-n // hop_frames)
    if n_hops == 0:
        return np.zeros(0, dtype=bool)
    # channel by channel: numpy's sum over a short trailing axis costs ~20x a plain square of one channel
    energy = np.square(x[:, 0], dtype=np.float64)
    for ch in range(1, x.shape[1]):
        energy += np.square(x[:, ch], dtype=np.float64)
    starts = np.arange(n_hops, dtype=np.int64) * hop_frames
    sums = np.add.reduceat(energy, starts)
    counts = np.minimum(starts + hop_frames, n) - starts
    mean_square = sums / (counts * x.shape[1])
    # Compare powers rather than taking a log of possibly-zero values: rms > 10^(dB/20) <=> ms > 10^(dB/10).
    return mean_square > 10.0 ** (threshold_db / 10.0)


def _bridge_gaps(active: np.ndarray, max_gap: int) -> np.ndarray:
    """Set runs of False shorter than ``max_gap`` hops that lie between two True runs to True."""
    out = active.copy()
    if max_gap <= 0 or not active.any():
        return out
    padded = np.concatenate([[True], active, [True]]).astype(np.int8)
    edges = np.diff(padded)
    gap_starts = np.flatnonzero(edges == -1)  # index in `active` where a False run starts
    gap_ends = np.flatnonzero(edges == 1)  # index where it ends (exclusive)
    for start, end in zip(gap_starts, gap_ends, strict=True):
        inner = start > 0 and end < active.shape[0]  # leading/trailing silence is not a gap between words
        if inner and end - start < max_gap:
            out[start:end] = True
    return out


def duck_curve(activity: np.ndarray, params: DuckParams, hop_s: float) -> np.ndarray:
    """Per-hop linear music gain (float32) in ``[db_to_gain(-depth_db), 1]`` for a speech-activity series.

    The target reduction is ``depth_db`` on (bridged) speech and 0 elsewhere; the reduction follows it as a
    one-pole filter whose time constant is ``attack_ms`` while the target is above the current value and
    ``release_ms`` while it is below. The target is piecewise constant, so each run has a closed form
    ``target + (start - target) * exp(-t / tau)`` and only the runs are looped over, not the hops.
    """
    if not isinstance(params, DuckParams):
        raise ValueError(f"params must be a DuckParams, got {type(params).__name__}")
    act = np.asarray(activity)
    if act.ndim != 1 or act.dtype != np.bool_:
        raise ValueError(f"activity must be a 1-D bool array, got shape {act.shape} dtype {act.dtype}")
    hop_s = check_finite(hop_s, "hop_s")
    if hop_s <= 0.0:
        raise ValueError(f"hop_s must be > 0 s, got {hop_s!r}")
    n = act.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    bridged = _bridge_gaps(act, round(params.hold_ms / 1000.0 / hop_s))
    depth = float(params.depth_db)
    edges = np.flatnonzero(np.diff(bridged.astype(np.int8))) + 1
    run_starts = np.concatenate([[0], edges])
    run_ends = np.concatenate([edges, [n]])
    reduction = np.empty(n, dtype=np.float64)
    level = 0.0
    for start, end in zip(run_starts, run_ends, strict=True):
        on = bool(bridged[start])
        target = depth if on else 0.0
        tau_s = (params.attack_ms if on else params.release_ms) / 1000.0
        # Value after t hops of this run: the hop that starts the run already moves one step.
        t = np.arange(1, end - start + 1, dtype=np.float64) * hop_s
        reduction[start:end] = target + (level - target) * np.exp(-t / tau_s)
        level = float(reduction[end - 1])
    # An exponential never quite arrives: below a thousandth of a dB the music is simply back at unity.
    reduction[reduction < _SNAP_DB] = 0.0
    gain = np.power(10.0, -np.clip(reduction, 0.0, depth) / 20.0)
    return np.clip(gain, db_to_gain(-depth), 1.0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _ramp(hop_frames: int) -> np.ndarray:
    """``i / hop_frames`` for ``i < hop_frames``, float32."""
    ramp = (np.arange(hop_frames, dtype=np.float64) / hop_frames).astype(np.float32)
    ramp.flags.writeable = False
    return ramp


def duck_gain_block(curve: np.ndarray, hop_frames: int, start_frame: int, n_frames: int) -> np.ndarray:
    """Per-frame gain (float32, ``(n_frames,)``) for frames ``start_frame ..`` from a per-hop ``curve``.

    Curve value ``k`` sits at frame ``k * hop_frames``; frames in between are linearly interpolated, frames
    after the last hop take the last value, and an empty curve gives 1.0.
    """
    c = np.asarray(curve)
    if c.ndim != 1:
        raise ValueError(f"curve must be 1-D (one gain per hop), got shape {c.shape}")
    hop_frames = check_frames(hop_frames, "hop_frames", minimum=1)
    start_frame = check_frames(start_frame, "start_frame")
    n_frames = check_frames(n_frames, "n_frames")
    if c.shape[0] == 0:
        return np.ones(n_frames, dtype=np.float32)
    out = np.empty(n_frames, dtype=np.float32)
    end = start_frame + n_frames
    between = min(end, (c.shape[0] - 1) * hop_frames)  # frames before this lie between two curve values
    if between > start_frame:
        # hop by hop: value k plus a ramp to value k + 1 (what np.interp gives, without a search per frame)
        k0, k1 = start_frame // hop_frames, -(-between // hop_frames)
        values = c[k0 : k1 + 1].astype(np.float32)
        hops = np.multiply(np.diff(values)[:, None], _ramp(hop_frames)[None, :])
        hops += values[:-1, None]
        out[: between - start_frame] = hops.ravel()[start_frame - k0 * hop_frames : between - k0 * hop_frames]
    out[max(0, between - start_frame) :] = c[-1]
    return out
