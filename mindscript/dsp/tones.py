"""Stationary sine tones: Solfeggio (same sine in both ears) and binaural beats (different per ear).

The phase of every sample is a function of its absolute frame index only,
``phase(n) = frac(f * n / sample_rate)``, so a program rendered in blocks of any size is identical (to float
rounding) to one rendered in one call and has no discontinuity at block joins. The fraction is reduced in
float64 from a per-block base that splits ``n`` into whole seconds and a remainder: the whole-seconds part
contributes only ``frac(f) * seconds``, so the phase stays exact to ~1e-11 cycle even two hours into a
program. Samples are then synthesized in float32 from that exactly reduced phase.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ._checks import check_finite, check_frames, check_sample_rate

__all__ = ["ToneParams", "binaural", "solfeggio", "tone_block", "tone_channels"]

# Samples are produced as rows of this many frames: sin(a + b) = sin(a) cos(b) + cos(a) sin(b), with the
# row phase ``a`` reduced exactly in float64 and the within-row phase ``b`` from a small table. This costs
# one small float32 matrix product per block instead of a transcendental call per sample.
_ROW = 256
_CHUNK = 256 * _ROW
CHUNK_FRAMES = _CHUNK  # the longest block :func:`tone_channels` gives


@dataclass(frozen=True)
class ToneParams:
    """A stereo pair of sines.

    Attributes:
        left_hz: frequency of the left-ear sine in Hz (> 0).
        right_hz: frequency of the right-ear sine in Hz (> 0).
        amplitude: linear peak amplitude per ear, in [0, 1].
    """

    left_hz: float
    right_hz: float
    amplitude: float

    def __post_init__(self) -> None:
        for name in ("left_hz", "right_hz"):
            value = check_finite(getattr(self, name), name)
            if value <= 0.0:
                raise ValueError(f"{name} must be > 0 Hz, got {value!r}")
        amplitude = check_finite(self.amplitude, "amplitude")
        if not 0.0 <= amplitude <= 1.0:
            raise ValueError(f"amplitude must be in [0, 1] (linear peak), got {amplitude!r}")


def solfeggio(hz: float, amplitude: float) -> ToneParams:
    """The same ``hz`` sine in both ears at linear peak ``amplitude``."""
    return ToneParams(left_hz=hz, right_hz=hz, amplitude=amplitude)


def binaural(carrier_hz: float, beat_hz: float, amplitude: float) -> ToneParams:
    """A binaural beat: ``carrier_hz`` in the left ear, ``carrier_hz + beat_hz`` in the right ear."""
    carrier_hz = check_finite(carrier_hz, "carrier_hz")
    beat_hz = check_finite(beat_hz, "beat_hz")
    return ToneParams(left_hz=carrier_hz, right_hz=carrier_hz + beat_hz, amplitude=amplitude)


def _phase_frac(hz: float, sample_rate: int, frames: np.ndarray) -> np.ndarray:
    """``frac(hz * frames / sample_rate)`` in float64 without large-number precision loss.

    With ``frame = q * sample_rate + r``: ``hz * frame / sr = hz * q + hz * r / sr``, and ``hz * q`` only
    matters through ``frac(hz) * q`` (the integer part of ``hz`` times whole seconds is whole cycles), so
    no intermediate exceeds ``max(q, hz)`` and the error stays ~1e-11 cycle for any program length.
    """
    q, r = np.divmod(frames, sample_rate)
    frac_hz = hz - math.floor(hz)
    phase = (frac_hz * q) % 1.0 + hz * r / sample_rate
    return phase % 1.0


def _sine(hz: float, sample_rate: int, start_frame: int, n_frames: int, amplitude: float) -> np.ndarray:
    """``amplitude * sin(2 pi frac(hz * n / sr))`` for ``n = start_frame ...`` as float32 ``(n_frames,)``."""
    rows = -(-n_frames // _ROW)
    row_frames = start_frame + _ROW * np.arange(rows, dtype=np.int64)
    row_angle = 2.0 * np.pi * _phase_frac(hz, sample_rate, row_frames)
    # [A sin(a), A cos(a)] per row times [cos(b); sin(b)] per column gives A sin(a + b).
    coarse = np.empty((rows, 2), dtype=np.float64)
    coarse[:, 0] = amplitude * np.sin(row_angle)
    coarse[:, 1] = amplitude * np.cos(row_angle)
    fine_angle = 2.0 * np.pi * (hz / sample_rate) * np.arange(_ROW, dtype=np.float64)
    fine = np.stack([np.cos(fine_angle), np.sin(fine_angle)])
    out = coarse.astype(np.float32) @ fine.astype(np.float32)
    return out.reshape(-1)[:n_frames]


# A frequency that is a whole number of hertz (every Solfeggio tone, most carriers and beats) repeats exactly
# every ``sample_rate / gcd(sample_rate, hz)`` frames (528 Hz at 44.1 kHz: 3675 frames). Such a tone is copied
# from one period computed in float64 and laid out long enough for any chunk, instead of being synthesized.
_MAX_PERIOD = 1 << 16


@functools.lru_cache(maxsize=16)
def _periodic(hz: float, sample_rate: int, amplitude: float) -> tuple[int, np.ndarray] | None:
    """(period, ``amplitude * sin`` of frames ``0 .. period + _CHUNK - 1``) for a whole-hertz tone, else None."""
    if hz != math.floor(hz):
        return None
    common = math.gcd(sample_rate, int(hz))
    period, cycles = sample_rate // common, int(hz) // common  # ``cycles`` whole cycles every ``period`` frames
    if period > _MAX_PERIOD:
        return None
    n = np.arange(period, dtype=np.int64)
    one = amplitude * np.sin(2.0 * np.pi * ((cycles * n) % period) / period)  # exact phase: integer arithmetic
    table = np.resize(one.astype(np.float32), period + _CHUNK)
    table.flags.writeable = False
    return period, table


def _tone(hz: float, sample_rate: int, start_frame: int, n_frames: int, amplitude: float) -> np.ndarray:
    """``_sine``, or the same samples copied from the tone's period when it has a short one."""
    periodic = _periodic(hz, sample_rate, amplitude)
    if periodic is None:
        return _sine(hz, sample_rate, start_frame, n_frames, amplitude)
    period, table = periodic
    offset = start_frame % period
    return table[offset : offset + n_frames]


def _checked(params: ToneParams, sample_rate: int, start_frame: int, n_frames: int) -> tuple[int, int, int]:
    if not isinstance(params, ToneParams):
        raise ValueError(f"params must be a ToneParams, got {type(params).__name__}")
    sample_rate = check_sample_rate(sample_rate)
    start_frame = check_frames(start_frame, "start_frame")
    n_frames = check_frames(n_frames, "n_frames")
    nyquist = sample_rate / 2.0
    for name in ("left_hz", "right_hz"):
        hz = getattr(params, name)
        if hz >= nyquist:
            raise ValueError(f"{name} must be below Nyquist ({nyquist} Hz at {sample_rate} Hz), got {hz!r}")
    return sample_rate, start_frame, n_frames


def tone_channels(params: ToneParams, sample_rate: int, start_frame: int, n_frames: int) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """The left and right channels of :func:`tone_block` as float32 ``(n_frames,)`` arrays (read-only views of
    a tone's period table where it has one), for ``n_frames`` up to one chunk (65536 frames)."""
    sample_rate, start_frame, n_frames = _checked(params, sample_rate, start_frame, n_frames)
    if n_frames > _CHUNK:
        raise ValueError(f"n_frames must be at most {_CHUNK}, got {n_frames!r}")
    amplitude = float(params.amplitude)
    left = _tone(float(params.left_hz), sample_rate, start_frame, n_frames, amplitude)
    if params.right_hz == params.left_hz:
        return left, left
    return left, _tone(float(params.right_hz), sample_rate, start_frame, n_frames, amplitude)


def tone_block(params: ToneParams, sample_rate: int, start_frame: int, n_frames: int) -> np.ndarray:
    """Render frames ``start_frame .. start_frame + n_frames - 1`` of a tone pair as float32 ``(n, 2)``.

    Phase starts at 0 at absolute frame 0. No fades are applied (the caller applies
    :func:`mindscript.dsp.envelopes.fade_gain`).
    """
    sample_rate, start_frame, n_frames = _checked(params, sample_rate, start_frame, n_frames)
    out = np.empty((n_frames, 2), dtype=np.float32)
    amplitude = float(params.amplitude)
    # Chunks keep the scratch arrays cache-sized however long a one-shot render is.
    for lo in range(0, n_frames, _CHUNK):
        n = min(_CHUNK, n_frames - lo)
        out[lo : lo + n, 0] = _tone(float(params.left_hz), sample_rate, start_frame + lo, n, amplitude)
        if params.right_hz == params.left_hz:
            out[lo : lo + n, 1] = out[lo : lo + n, 0]
        else:
            out[lo : lo + n, 1] = _tone(float(params.right_hz), sample_rate, start_frame + lo, n, amplitude)
    return out
