"""Look-ahead true-peak limiter.

The gain computer works in dB of gain reduction, vectorized over whole blocks:

1. ``required[i] = max(0, 20 log10(tp[i]) - ceiling)`` from the 4x-oversampled true-peak envelope ``tp`` of
   :mod:`mindscript.dsp.truepeak` (BS.1770-4 Annex 2), with the ceiling lowered by a small safety margin.
2. Hold: ``hold[i] = max(required[i - K .. i + L + K])``, ``L`` the look-ahead and ``K`` the half-length of
   the true-peak interpolator (an O(n) sliding maximum).
3. Attack: a triangular moving average of ``hold`` over ``hold[i - L .. i]``. Every value averaged around a
   peak ``p`` (for ``|i - p| <= K``) holds at least ``required[p]``, so the gain is already fully down over
   the whole interpolator support of the peak, and gain reduction starts ``L`` frames before it.
4. Release: ``u[i] = max(attack[i], a * u[i - 1])`` with ``a = exp(-1 / (release_s * sr))``, an exponential
   recovery of the reduction in dB. The recursion is evaluated without a loop: in the log domain it is a
   running maximum, ``ln u[i] = i ln a + cummax_j(ln attack[j] - j ln a)``.

The output is the input delayed by :func:`limiter_latency` frames inside the limiter, times the gain; the
held-back frames come out of later calls and :func:`limiter_flush`, so the concatenated output has exactly
the input's length and timing. A signal that never needs limiting has gain exactly 1.0 and passes through
bit-identical.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d

from ._checks import as_frames, check_finite, check_frames, check_sample_rate
from .truepeak import LATENCY_FRAMES as _TP_LATENCY
from .truepeak import TruePeakState, oversampled_peaks, truepeak_flush, truepeak_init

__all__ = [
    "LimiterParams",
    "LimiterState",
    "limiter_flush",
    "limiter_init",
    "limiter_latency",
    "limiter_process",
]

# Headroom below the ceiling for the gain itself modulating the signal (the output is not exactly the gain
# times the input's interpolated peak while the gain moves) and for float32 rounding of the output.
_SAFETY_DB = 0.05
# Reductions below this are released to exactly 0 dB, so music after a limited passage is bit-exact again.
_SNAP_DB = 1e-6


@dataclass(frozen=True)
class LimiterParams:
    """Limiter settings.

    Attributes:
        sample_rate: sample rate in Hz.
        ceiling_dbtp: maximum true peak of the output in dBTP.
        lookahead_ms: how long before a peak gain reduction starts (the attack ramp length).
        release_ms: time constant of the exponential recovery of the gain reduction (in dB).
    """

    sample_rate: int
    ceiling_dbtp: float = -1.0
    lookahead_ms: float = 5.0
    release_ms: float = 80.0

    def __post_init__(self) -> None:
        check_sample_rate(self.sample_rate)
        check_finite(self.ceiling_dbtp, "ceiling_dbtp")
        for name in ("lookahead_ms", "release_ms"):
            value = check_finite(getattr(self, name), name)
            if value <= 0.0:
                raise ValueError(f"{name} must be > 0 ms, got {value!r}")


@dataclass(frozen=True)
class LimiterState:
    """Explicit state of a streaming limiter (treat arrays as read-only).

    Attributes:
        params: the settings.
        channels: number of channels.
        truepeak: state of the true-peak envelope follower.
        required: required reduction (dB) of frames from ``frames_out + len(hold_history) - L - K`` up to the
            last enveloped frame (frames before the stream count as 0).
        hold_history: held reductions (dB) of the up to ``L`` frames before ``frames_out`` that the attack
            average still needs (empty at the start: holds of frames ``-L .. -1`` are computed first).
        log_reduction: natural log of the released reduction (dB) at frame ``frames_out - 1``; ``-inf``
            when there is none.
        delay: input frames received but not yet output, ``(frames, channels)`` float32.
        frames_in: frames received.
        frames_out: frames output.
        finished: True after :func:`limiter_flush`.
    """

    params: LimiterParams
    channels: int
    truepeak: TruePeakState
    required: np.ndarray
    hold_history: np.ndarray
    log_reduction: float
    delay: np.ndarray
    frames_in: int
    frames_out: int
    finished: bool = False


def _lookahead_frames(params: LimiterParams) -> int:
    return max(1, round(params.lookahead_ms * params.sample_rate / 1000.0))


def limiter_latency(params: LimiterParams) -> int:
    """Frames the limiter holds back internally (look-ahead plus the true-peak interpolator's lookahead)."""
    return _lookahead_frames(params) + 2 * _TP_LATENCY


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def limiter_init(params: LimiterParams, channels: int) -> LimiterState:
    """Start a streaming limiter for ``channels`` channels."""
    if not isinstance(params, LimiterParams):
        raise ValueError(f"params must be a LimiterParams, got {type(params).__name__}")
    channels = check_frames(channels, "channels", minimum=1)
    return LimiterState(
        params=params,
        channels=channels,
        truepeak=truepeak_init(channels),
        # Silence before the stream needs no reduction. Holds are also computed for the L frames before
        # frame 0, from real lookahead, so the attack ramp of a peak at the very start begins "before"
        # the stream and the gain at frame 0 is already down.
        required=_readonly(np.zeros(_lookahead_frames(params) + _TP_LATENCY, dtype=np.float64)),
        hold_history=_readonly(np.zeros(0, dtype=np.float64)),
        log_reduction=-math.inf,
        delay=_readonly(np.zeros((0, channels), dtype=np.float32)),
        frames_in=0,
        frames_out=0,
    )


def _sliding_max(x: np.ndarray, width: int) -> np.ndarray:
    """``out[q] = max(x[q : q + width])`` for every full window (an O(n) running-max filter)."""
    n_out = x.shape[0] - width + 1
    if n_out <= 0:
        return np.zeros(0, dtype=x.dtype)
    if not x.any():  # the common case for reductions: nothing near the ceiling
        return np.zeros(n_out, dtype=x.dtype)
    centred = maximum_filter1d(x, width, mode="nearest")
    return centred[width // 2 : width // 2 + n_out]


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """``out[q] = mean(x[q : q + width])`` for every full window (cumulative-sum differences)."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    return (c[width:] - c[:-width]) / width


def _required_reduction(env: np.ndarray, ceiling_db: float) -> np.ndarray:
    """dB of reduction that brings each envelope value down to the ceiling (0 where it is under)."""
    out = np.zeros(env.shape[0], dtype=np.float64)
    over = np.flatnonzero(env > np.float32(10.0 ** (ceiling_db / 20.0)))
    if over.size:
        out[over] = 20.0 * np.log10(env[over].astype(np.float64)) - ceiling_db
    return out


def _advance(
    state: LimiterState, env: np.ndarray, tp: TruePeakState, block: np.ndarray, final: bool
) -> tuple[np.ndarray, LimiterState]:
    params = state.params
    lookahead = _lookahead_frames(params)
    ceiling_db = params.ceiling_dbtp - _SAFETY_DB
    required = np.concatenate([state.required, _required_reduction(env, ceiling_db)])
    if final:
        required = np.concatenate([required, np.zeros(lookahead + _TP_LATENCY)])  # silence after the end
    # Hold: window [i - K, i + L + K].
    width = lookahead + 2 * _TP_LATENCY + 1
    hold = _sliding_max(required, width)
    history = np.concatenate([state.hold_history, hold])
    n = history.shape[0] - lookahead
    if n <= 0:
        return np.zeros((0, state.channels), dtype=np.float32), dataclasses.replace(
            state,
            truepeak=tp,
            required=_readonly(np.ascontiguousarray(required[hold.shape[0] :])),
            hold_history=_readonly(history),
            delay=_readonly(np.concatenate([state.delay, block])),
            frames_in=state.frames_in + block.shape[0],
            finished=final,
        )
    # Attack: triangular average of hold[i - L .. i] as two boxes of lengths b1 + b2 - 1 = L + 1.
    if history.any():
        b1 = (lookahead + 2) // 2
        b2 = lookahead + 2 - b1
        attack = _moving_average(_moving_average(history, b1), b2)
    else:
        attack = np.zeros(n, dtype=np.float64)  # the common case: nothing near the ceiling
    # Release: u[k] = max(attack[k], a u[k-1]) as a running max in the log domain. Logs and exps are
    # taken only where there is a reduction, which in mastered material is a small share of the frames.
    log_a = -1000.0 / (params.release_ms * params.sample_rate)
    k_log_a = np.arange(n, dtype=np.float64) * log_a
    positive = np.flatnonzero(attack > 0.0)
    if positive.size:
        trend = np.full(n + 1, -np.inf)
        trend[0] = state.log_reduction + log_a
        trend[positive + 1] = np.log(attack[positive]) - k_log_a[positive]
        log_u = np.maximum.accumulate(trend)[1:]
        log_u += k_log_a
    else:
        log_u = k_log_a + (state.log_reduction + log_a)
    delay = np.concatenate([state.delay, block]) if block.shape[0] else state.delay
    out = np.array(delay[:n], dtype=np.float32)
    # Reductions under the snap threshold are exactly 0 dB: those frames keep gain 1.0 (bit-exact).
    active = np.flatnonzero(log_u > math.log(_SNAP_DB))
    if active.size:
        gain = np.exp(np.exp(log_u[active]) * (-math.log(10.0) / 20.0)).astype(np.float32)
        if active.size == n:
            out *= gain[:, None]
        else:
            out[active] *= gain[:, None]
    new_state = dataclasses.replace(
        state,
        truepeak=tp,
        required=_readonly(np.ascontiguousarray(required[hold.shape[0] :])),
        hold_history=_readonly(np.ascontiguousarray(history[history.shape[0] - lookahead :])),
        log_reduction=float(log_u[-1]),
        delay=_readonly(np.ascontiguousarray(delay[n:])),
        frames_in=state.frames_in + block.shape[0],
        frames_out=state.frames_out + n,
        finished=final,
    )
    return out, new_state


def limiter_process(state: LimiterState, block: np.ndarray) -> tuple[np.ndarray, LimiterState]:
    """Limit a ``(frames, channels)`` block.

    Returns the output frames that are ready (``frames_out .. frames_in - latency``; the first call returns
    :func:`limiter_latency` fewer frames than it was given) and the new state. Concatenating the outputs of
    every call and of :func:`limiter_flush` gives exactly the input's length, time-aligned with it.
    """
    if not isinstance(state, LimiterState):
        raise ValueError(f"state must be a LimiterState, got {type(state).__name__}")
    if state.finished:
        raise ValueError("state was already flushed; start a new stream with limiter_init()")
    x = as_frames(block, "block", channels=state.channels)
    env, tp = oversampled_peaks(state.truepeak, x)
    return _advance(state, env, tp, x, final=False)


def limiter_flush(state: LimiterState) -> tuple[np.ndarray, LimiterState]:
    """Return the frames still held back (treating the stream as silent after its end)."""
    if not isinstance(state, LimiterState):
        raise ValueError(f"state must be a LimiterState, got {type(state).__name__}")
    if state.finished:
        return np.zeros((0, state.channels), dtype=np.float32), state
    env, tp = truepeak_flush(state.truepeak)
    return _advance(state, env, tp, np.zeros((0, state.channels), dtype=np.float32), final=True)
