"""True-peak measurement per ITU-R BS.1770-4 Annex 2: 4x oversampling, then the peak of the magnitude.

The interpolator is a polyphase windowed-sinc FIR (Kaiser, beta 8) with 4 phases of 32 taps. Phase 0
samples ``sinc`` at integers, so it is exactly the input sample: the true peak can never read below the
sample peak. Phases 1-3 give the values at ``i + 1/4, i + 2/4, i + 3/4``; the response is flat to 0.001 dB
up to 0.4 fs (20 kHz at 48 kHz), -0.4 dB at 20 kHz for 44.1 kHz material, and images are 80 dB down from
0.6 fs, which more than meets the Annex 2 filter specification (the 48-tap example filter there only
reaches about 40 dB).

Phases are evaluated with FFT overlap-save (batched over segments), so cost is a few FFTs per input sample
instead of 96 multiply-adds.

Streaming: the value for input frame ``i`` needs frames up to ``i + LATENCY_FRAMES`` (the interpolator
looks ahead by half its length). :func:`oversampled_peaks` therefore returns the envelope for the frames
whose lookahead has arrived, and :func:`truepeak_flush` returns the rest (the stream is taken to be silent
after its end). Concatenated, the envelope has one value per input frame, aligned to the input, and is
the same for any block sizes (to float32 FFT rounding, ~1e-7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from numpy.lib.stride_tricks import sliding_window_view

from ._checks import as_frames, check_frames, check_sample_rate

__all__ = [
    "LATENCY_FRAMES",
    "OVERSAMPLING",
    "TruePeakState",
    "oversampled_peaks",
    "true_peak_dbtp",
    "truepeak_db",
    "truepeak_flush",
    "truepeak_init",
    "truepeak_update",
]

OVERSAMPLING = 4
_HALF = 16  # taps per side of each phase: phase p uses frames i - 15 .. i + 16
_TAPS = 2 * _HALF
#: Frames of lookahead the envelope of a frame needs; the envelope lags the input by this much.
LATENCY_FRAMES = _HALF
_KAISER_BETA = 8.0
_NFFT = 4096  # overlap-save FFT size: 99.2 % useful output; batches stay cache-sized
_STEP = _NFFT - (_TAPS - 1)
_BATCH = 4  # segments per batched FFT call (~16k frames per channel: cache-sized, measured fastest)


def _phase_taps() -> np.ndarray:
    """Taps ``g_p[t]`` of phases 1..3 (shape ``(3, 32)``): ``y(i + p/4) = sum_t x[i - 15 + t] g_p[t]``."""
    out = np.empty((OVERSAMPLING - 1, _TAPS), dtype=np.float64)
    k = np.arange(_TAPS) - (_HALF - 1)  # frame offset of tap t relative to i
    for p in range(1, OVERSAMPLING):
        u = p / OVERSAMPLING - k  # distance (in input samples) from the output instant to each input frame
        window = np.i0(_KAISER_BETA * np.sqrt(1.0 - (u / _HALF) ** 2)) / np.i0(_KAISER_BETA)
        taps = np.sinc(u) * window
        out[p - 1] = taps / taps.sum()  # unity DC gain per phase: a constant reads as itself
    return out


def _phase_spectra() -> np.ndarray:
    """Spectra of the time-reversed phase filters for overlap-save, shape ``(3, 1, 1, NFFT/2+1)``."""
    taps = _phase_taps()[:, ::-1].astype(np.float32)
    spectra = np.array(sfft.rfft(taps, n=_NFFT, axis=-1)[:, None, None, :], dtype=np.complex64)
    spectra.flags.writeable = False
    return spectra


_SPECTRA = _phase_spectra()


@dataclass(frozen=True)
class TruePeakState:
    """Explicit state of a streaming true-peak meter (treat arrays as read-only).

    Attributes:
        channels: number of channels.
        history: input frames still needed, shape ``(frames, channels)`` float32: the last 15 frames
            before ``frames_out`` (zeros before the stream starts) and every frame received since.
        frames_in: frames received so far.
        frames_out: frames whose envelope has been returned so far (``frames_in - 16`` in steady state).
        max_abs: largest envelope value returned so far (linear; the pending tail is added by
            :func:`truepeak_db`).
        finished: True after :func:`truepeak_flush`; the stream cannot be continued.
    """

    channels: int
    history: np.ndarray
    frames_in: int
    frames_out: int
    max_abs: float
    finished: bool = False


def truepeak_init(channels: int) -> TruePeakState:
    """Start a streaming true-peak meter for ``channels`` channels."""
    channels = check_frames(channels, "channels", minimum=1)
    history = np.zeros((_HALF - 1, channels), dtype=np.float32)
    history.flags.writeable = False
    return TruePeakState(channels=channels, history=history, frames_in=0, frames_out=0, max_abs=0.0)


def _max_abs_rows(rows: np.ndarray) -> np.ndarray:
    """Elementwise ``max_k |rows[k]|`` over the first axis (a chain of binary maxima: numpy's multi-axis
    ``max`` reduction over leading axes was measured several times slower here)."""
    out = np.abs(rows[0])
    scratch = np.empty_like(out)
    for k in range(1, rows.shape[0]):
        np.abs(rows[k], out=scratch)
        np.maximum(out, scratch, out=out)
    return out


def _envelope(rows: np.ndarray) -> np.ndarray:
    """True-peak envelope of the centre frames of ``rows`` (``(channels, n)`` float32, n >= 31).

    Returns ``n - 31`` values: for output ``j`` the maximum over channels of ``|x[j + 15]|`` (phase 0) and
    of the three interpolated values after it.
    """
    channels, n = rows.shape
    m = n - (_TAPS - 1)
    env = _max_abs_rows(rows[:, _HALF - 1 : _HALF - 1 + m])
    n_seg = -(-m // _STEP)
    padded = np.zeros((channels, n_seg * _STEP + _TAPS - 1), dtype=np.float32)
    padded[:, :n] = rows
    for b0 in range(0, n_seg, _BATCH):
        b1 = min(n_seg, b0 + _BATCH)
        # Overlapping segments of NFFT frames, advancing by STEP: each yields STEP valid outputs.
        segments = sliding_window_view(padded[:, b0 * _STEP : (b1 - 1) * _STEP + _NFFT], _NFFT, axis=-1)
        spectrum = sfft.rfft(segments[:, ::_STEP], axis=-1)
        phases = sfft.irfft(spectrum[None] * _SPECTRA, n=_NFFT, axis=-1, overwrite_x=True)
        # Max over phases 1-3 and channels; the first TAPS - 1 outputs of a segment wrap around.
        peak = _max_abs_rows(phases.reshape(-1, b1 - b0, _NFFT))[:, _TAPS - 1 :].reshape(-1)
        lo = b0 * _STEP
        hi = min(b1 * _STEP, m)
        np.maximum(env[lo:hi], peak[: hi - lo], out=env[lo:hi])
    return env


def _advance(state: TruePeakState, rows: np.ndarray, frames_in: int) -> tuple[np.ndarray, TruePeakState]:
    """Emit every frame of ``rows`` (history + new frames, ``(channels, n)``) whose lookahead is present."""
    m = rows.shape[1] - (_TAPS - 1)
    if m <= 0:
        env = np.zeros(0, dtype=np.float32)
        rest = rows
    else:
        env = _envelope(rows)
        rest = rows[:, m:]
    history = np.ascontiguousarray(rest.T)
    history.flags.writeable = False
    max_abs = max(state.max_abs, float(env.max())) if env.size else state.max_abs
    return env, TruePeakState(
        channels=state.channels,
        history=history,
        frames_in=frames_in,
        frames_out=state.frames_out + max(m, 0),
        max_abs=max_abs,
        finished=state.finished,
    )


def oversampled_peaks(state: TruePeakState, block: np.ndarray) -> tuple[np.ndarray, TruePeakState]:
    """Feed a ``(frames, channels)`` block; return the next envelope values and the new state.

    The envelope value of input frame ``i`` is ``max`` over channels and the 4 phases ``i, i + 1/4, i + 2/4,
    i + 3/4`` of the magnitude of the 4x-oversampled signal (float32, shape ``(m,)``). It covers frames
    ``state.frames_out .. state.frames_out + m - 1``; because of the lookahead, the last
    :data:`LATENCY_FRAMES` frames received are returned by a later call or by :func:`truepeak_flush`.
    """
    if not isinstance(state, TruePeakState):
        raise ValueError(f"state must be a TruePeakState, got {type(state).__name__}")
    if state.finished:
        raise ValueError("state was already flushed; start a new stream with truepeak_init()")
    x = as_frames(block, "block", channels=state.channels)
    rows = np.concatenate([state.history.T, x.T], axis=1)
    return _advance(state, rows, state.frames_in + x.shape[0])


def truepeak_flush(state: TruePeakState) -> tuple[np.ndarray, TruePeakState]:
    """Return the envelope of the frames still held back (the stream is silent after its end)."""
    if not isinstance(state, TruePeakState):
        raise ValueError(f"state must be a TruePeakState, got {type(state).__name__}")
    if state.finished:
        return np.zeros(0, dtype=np.float32), state
    tail = np.zeros((state.channels, _HALF), dtype=np.float32)
    rows = np.concatenate([state.history.T, tail], axis=1)
    env, new = _advance(state, rows, state.frames_in)
    return env, TruePeakState(
        channels=new.channels,
        history=new.history,
        frames_in=new.frames_in,
        frames_out=new.frames_out,
        max_abs=new.max_abs,
        finished=True,
    )


def truepeak_update(state: TruePeakState, block: np.ndarray) -> TruePeakState:
    """Feed a block to a streaming true-peak maximum (see :func:`truepeak_db`)."""
    return oversampled_peaks(state, block)[1]


def _to_db(linear: float) -> float:
    return 20.0 * math.log10(linear) if linear > 0.0 else -math.inf


def truepeak_db(state: TruePeakState) -> float:
    """True peak in dBTP of everything fed so far, including the held-back tail; ``-inf`` for silence."""
    _, flushed = truepeak_flush(state)
    return _to_db(flushed.max_abs)


def true_peak_dbtp(samples: np.ndarray, sample_rate: int) -> float:
    """One-shot true peak (BS.1770-4 Annex 2, 4x oversampling) of a ``(frames, channels)`` signal, in dBTP.

    ``sample_rate`` is validated only: 4x oversampling is used at every rate.
    """
    check_sample_rate(sample_rate)
    x = as_frames(samples)
    return truepeak_db(truepeak_update(truepeak_init(x.shape[1]), x))
