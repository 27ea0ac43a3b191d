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

from . import _native
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
    """``out[q] = max(x[q : q + width])`` for every full window.

    By doubling: after k steps ``cur[q] = max(x[q : q + 2**k])``, and a window of any width is the max of
    two overlapping power-of-two windows. log2(width) vectorized maxima, exact, several times faster here
    than scipy's running-max filter.
    """
    n_out = x.shape[0] - width + 1
    if n_out <= 0:
        return np.zeros(0, dtype=x.dtype)
    cur, span = x, 1
    while span * 2 <= width:
        cur = np.maximum(cur[:-span], cur[span:])
        span *= 2
    rest = width - span
    return np.maximum(cur[:n_out], cur[rest : rest + n_out]) if rest else cur[:n_out].copy()


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """``out[q] = mean(x[q : q + width])`` for every full window (differences of a running sum).

    The running sum leaves rounding residue (~1e-16 of the sum so far) where the exact mean is 0; such
    values are far under the snap threshold and do not change the gain.
    """
    n_out = x.shape[0] - width + 1
    if n_out <= 0:
        return np.zeros(0, dtype=np.float64)
    total = np.empty(x.shape[0] + 1, dtype=np.float64)
    total[0] = 0.0
    np.cumsum(x, out=total[1:])
    out = total[width:] - total[:n_out]
    out /= width
    return out


def _ceiling_linear(params: LimiterParams) -> float:
    """The envelope level above which a reduction is required (the ceiling less the safety margin)."""
    return float(np.float32(10.0 ** ((params.ceiling_dbtp - _SAFETY_DB) / 20.0)))


@dataclass(frozen=True)
class _Sparse:
    """A mostly-zero float64 series given by its nonzero positions (sorted) and values."""

    length: int
    positions: np.ndarray
    values: np.ndarray

    def dense(self, lo: int, hi: int) -> np.ndarray:
        """The series over positions ``lo .. hi - 1`` as a dense array."""
        out = np.zeros(hi - lo, dtype=np.float64)
        i0, i1 = np.searchsorted(self.positions, (lo, hi))
        out[self.positions[i0:i1] - lo] = self.values[i0:i1]
        return out


def _required_reduction(state: LimiterState, env: np.ndarray, final: bool) -> _Sparse:
    """dB of reduction that brings each envelope value down to the ceiling (0 where it is under), appended to
    the reductions still held in the state (and, at the end of the stream, to the silence after it)."""
    params = state.params
    over = np.flatnonzero(env > np.float32(_ceiling_linear(params)))
    held = np.flatnonzero(state.required)
    tail = _lookahead_frames(params) + _TP_LATENCY if final else 0
    ceiling_db = params.ceiling_dbtp - _SAFETY_DB
    return _Sparse(
        length=state.required.shape[0] + env.shape[0] + tail,
        positions=np.concatenate([held, over + state.required.shape[0]]),
        values=np.concatenate([state.required[held], 20.0 * np.log10(env[over].astype(np.float64)) - ceiling_db]),
    )


def _release_tail(log_start: float, log_a: float, count: int) -> int:
    """How many of the next ``count`` frames of a free release from ``ln u = log_start`` stay over the snap.

    Frame ``k`` (from 0) has ``ln u = log_start + (k + 1) ln a``; one spare frame covers rounding.
    """
    if not log_start > math.log(_SNAP_DB):
        return 0
    return min(count, int((math.log(_SNAP_DB) - log_start) / log_a) + 2)


def _advance_native(
    state: LimiterState, env: np.ndarray, tp: TruePeakState, block: np.ndarray, final: bool
) -> tuple[np.ndarray, LimiterState]:
    """:func:`_advance` in C (msdsp.c ``ms_limit``): the call's reductions, holds, gain and output in one pass."""
    params = state.params
    lookahead = _lookahead_frames(params)
    log_a = -1000.0 / (params.release_ms * params.sample_rate)
    delay = np.concatenate([state.delay, block]) if block.shape[0] else state.delay
    width = lookahead + 2 * _TP_LATENCY + 1
    b1 = (lookahead + 2) // 2
    released = math.exp(state.log_reduction + log_a) if state.log_reduction > -math.inf else 0.0
    out, required, holds, u_last = _native.limit(
        state.required, env, lookahead + _TP_LATENCY if final else 0, state.hold_history, delay,
        ceiling=np.float32(_ceiling_linear(params)), ceiling_db=params.ceiling_dbtp - _SAFETY_DB, width=width,
        look=lookahead, b1=b1, b2=lookahead + 2 - b1, released=released, a=math.exp(log_a), snap=_SNAP_DB)
    n = out.shape[0]
    log_reduction = state.log_reduction
    if u_last is not None:
        log_reduction = math.log(u_last) if u_last > 0.0 else -math.inf
    return out, dataclasses.replace(
        state,
        truepeak=tp,
        required=_readonly(required[max(required.shape[0] - width + 1, 0):].copy()),
        hold_history=_readonly(holds[n:].copy() if n else holds),
        log_reduction=log_reduction,
        delay=_readonly(np.ascontiguousarray(delay[n:])),
        frames_in=state.frames_in + block.shape[0],
        frames_out=state.frames_out + n,
        finished=final,
    )


def _advance(
    state: LimiterState, env: np.ndarray, tp: TruePeakState, block: np.ndarray, final: bool
) -> tuple[np.ndarray, LimiterState]:
    if _native.lib is not None:
        return _advance_native(state, env, tp, block, final)
    params = state.params
    lookahead = _lookahead_frames(params)
    required = _required_reduction(state, env, final)
    # Hold: window [i - K, i + L + K].
    width = lookahead + 2 * _TP_LATENCY + 1
    n_hold = max(required.length - width + 1, 0)
    held = state.hold_history.shape[0]
    n = held + n_hold - lookahead  # frames output by this call
    delay = np.concatenate([state.delay, block]) if block.shape[0] else state.delay
    if n <= 0:
        dense = required.dense(0, required.length)
        return np.zeros((0, state.channels), dtype=np.float32), dataclasses.replace(
            state,
            truepeak=tp,
            required=_readonly(dense[n_hold:]),
            hold_history=_readonly(np.concatenate([state.hold_history, _sliding_max(dense, width)])),
            delay=_readonly(delay),
            frames_in=state.frames_in + block.shape[0],
            finished=final,
        )
    # The history of holds is the L held-over values then this call's holds; outputs q = 0 .. n - 1 need
    # history[q .. q + L]. Reductions are rare in mastered material, so everything below works on the one
    # span of history that is nonzero: elsewhere the hold and the attack are exactly 0.
    nonzero = [int(i) for i in np.flatnonzero(state.hold_history)[[0, -1]]] if state.hold_history.any() else []
    if required.positions.size:
        # hold[h] takes required[h .. h + width - 1]: a reduction at p holds h = p - width + 1 .. p.
        lo, hi = max(0, int(required.positions[0]) - width + 1), min(n_hold - 1, int(required.positions[-1]))
        if lo <= hi:
            nonzero += [held + lo, held + hi]
    log_a = -1000.0 / (params.release_ms * params.sample_rate)
    hold_history = np.zeros(lookahead, dtype=np.float64)
    if nonzero:
        q0 = max(0, min(nonzero) - lookahead)  # first and last output whose attack can be nonzero
        q1 = min(n - 1, max(nonzero))
        history = np.empty(q1 + lookahead + 1 - q0, dtype=np.float64)  # history[q0 .. q1 + L]
        split = min(max(q0, held), q1 + lookahead + 1)
        history[: split - q0] = state.hold_history[q0:split]
        h0, h1 = split - held, q1 + lookahead + 1 - held
        if h1 > h0:
            history[split - q0 :] = _sliding_max(required.dense(h0, h1 + width - 1), width)
        hold_history[: max(0, history.shape[0] - (n - q0))] = history[n - q0 :]
        # Attack: triangular average of hold[i - L .. i] as two boxes of lengths b1 + b2 - 1 = L + 1.
        b1 = (lookahead + 2) // 2
        b2 = lookahead + 2 - b1
        g0 = 0 if _release_tail(state.log_reduction, log_a, q0) else q0
        seed = state.log_reduction + (q0 + 1) * log_a  # the freely released reduction at q0
        attack = _moving_average(_moving_average(history, b1), b2)
        # Release: u[k] = max(attack[k], a u[k-1]) as a running max in the log domain, seeded with the
        # freely released reduction at q0 - 1.
        k_log_a = np.arange(attack.shape[0], dtype=np.float64) * log_a
        trend = np.full(attack.shape[0] + 1, -np.inf)
        trend[0] = seed
        np.log(attack, out=trend[1:], where=attack > 0.0)  # ln 0 stays -inf (no reduction there)
        trend[1:] -= k_log_a
        np.maximum.accumulate(trend, out=trend)
        span = trend[1:] + k_log_a
        log_end = float(span[-1])
        g1 = q1 + 1 + _release_tail(log_end, log_a, n - 1 - q1)
        log_u = np.empty(g1 - g0, dtype=np.float64)
        log_u[: q0 - g0] = state.log_reduction + np.arange(g0 + 1, q0 + 1) * log_a
        log_u[q0 - g0 : q1 + 1 - g0] = span
        log_u[q1 + 1 - g0 :] = log_end + np.arange(1, g1 - q1) * log_a
        log_reduction = log_end + (n - 1 - q1) * log_a
    else:
        g0, g1 = 0, _release_tail(state.log_reduction, log_a, n)
        log_u = state.log_reduction + np.arange(1, g1 + 1) * log_a
        log_reduction = state.log_reduction + n * log_a
    out = np.array(delay[:n], dtype=np.float32)
    # Reductions under the snap threshold are exactly 0 dB: those frames keep gain 1.0 (bit-exact).
    active = log_u > math.log(_SNAP_DB)
    if active.all():
        lo, hi = 0, active.shape[0]
    else:
        where = np.flatnonzero(active)
        lo, hi = (int(where[0]), int(where[-1]) + 1) if where.size else (0, 0)
    if hi > lo:
        # 10^(-u/20) with u in dB, both exps in float32 (SIMD; float64 exp has no vector path on AVX2 and
        # cost more than the rest of this function): the gain is float32 anyway, off by ~1e-6 relative.
        gain = np.exp(np.exp(log_u[lo:hi].astype(np.float32)) * np.float32(-math.log(10.0) / 20.0))
        if not active[lo:hi].all():
            gain[~active[lo:hi]] = 1.0  # x * 1.0 is x, bit for bit
        for ch in range(out.shape[1]):  # one strided pass per channel (a broadcast row-by-row is slower)
            np.multiply(out[g0 + lo : g0 + hi, ch], gain, out=out[g0 + lo : g0 + hi, ch])
    new_state = dataclasses.replace(
        state,
        truepeak=tp,
        required=_readonly(required.dense(n_hold, required.length)),
        hold_history=_readonly(hold_history),
        log_reduction=float(log_reduction),
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
    # Only envelope values over the ceiling matter (they alone set a reduction): the true-peak follower
    # may skip the oversampling wherever the signal provably stays under it.
    env, tp = oversampled_peaks(state.truepeak, x, floor=_ceiling_linear(state.params))
    return _advance(state, env, tp, x, final=False)


def limiter_flush(state: LimiterState) -> tuple[np.ndarray, LimiterState]:
    """Return the frames still held back (treating the stream as silent after its end)."""
    if not isinstance(state, LimiterState):
        raise ValueError(f"state must be a LimiterState, got {type(state).__name__}")
    if state.finished:
        return np.zeros((0, state.channels), dtype=np.float32), state
    env, tp = truepeak_flush(state.truepeak)
    return _advance(state, env, tp, np.zeros((0, state.channels), dtype=np.float32), final=True)
