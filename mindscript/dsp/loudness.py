"""Loudness measurement per ITU-R BS.1770-4 and EBU R128 (Tech 3341 meters, Tech 3342 loudness range).

The meter is streaming with explicit state: :func:`meter_init` builds a :class:`MeterState`,
:func:`meter_update` folds in a block and returns the next state, and :func:`meter_result` turns the
accumulated state into :class:`LoudnessStats`. Everything is derived from one quantity per 100 ms step and
channel, the mean square of the K-weighted signal. Because 400 ms gating blocks overlap by 75 % and 3 s
short-term windows advance at 10 Hz, both are exact unions of consecutive steps (4 and 30 of them), so the
step series is all the state a meter needs and the result does not depend on how the stream was cut into
blocks: filter state ``zi`` is carried across blocks and a step is summed only once all its samples are in.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy

from . import _native
from ._checks import as_frames, check_frames, check_sample_rate

__all__ = [
    "LoudnessStats",
    "MeterState",
    "MIN_SAMPLE_RATE",
    "STEP_SECONDS",
    "integrated_loudness",
    "k_weighting_sos",
    "loudness_stats",
    "meter_concat",
    "meter_init",
    "meter_result",
    "meter_steps",
    "meter_update",
]

#: The lowest rate the K-weighting prototype is derived for (the shelf sits at 1.68 kHz).
MIN_SAMPLE_RATE = 8000
#: Length of one accounting step: the 75 % overlap hop of 400 ms gating blocks (BS.1770-4, 2.8).
STEP_SECONDS = 0.1

_BLOCK_STEPS = 4  # 400 ms gating block / momentary window = 4 steps (BS.1770-4 eq. 3, T_g = 0.4 s)
_SHORT_TERM_STEPS = 30  # 3 s short-term window (EBU Tech 3341 2.2, Tech 3342 3.1) = 30 steps
_OFFSET_LUFS = -0.691  # BS.1770-4 eq. 2: calibrates a 997 Hz sine in one channel, 0 dBFS peak, to -3.01
_ABSOLUTE_GATE_LUFS = -70.0  # BS.1770-4 eq. 4 / Tech 3342: Gamma_a
_RELATIVE_GATE_LU = -10.0  # BS.1770-4 eq. 6: Gamma_r is 10 LU below the absolute-gated loudness
_LRA_RELATIVE_GATE_LU = -20.0  # EBU Tech 3342 3.2: 20 LU below the absolute-gated short-term level
_LRA_LOW_PERCENTILE = 10.0  # EBU Tech 3342 3.2: LRA = L95 - L10 of the gated short-term distribution
_LRA_HIGH_PERCENTILE = 95.0

# Analog prototype behind the 48 kHz coefficient tables of BS.1770-4 (Tables 1 and 2), as recovered and
# used by libebur128. Re-deriving through the bilinear transform with frequency pre-warping gives the
# table values exactly at 48 kHz and the same response at any other rate.
_SHELF_HZ = 1681.974450955533
_SHELF_GAIN_DB = 3.999843853973347
_SHELF_Q = 0.7071752369554196
_SHELF_VB_EXPONENT = 0.4996667741545416
_HIGHPASS_HZ = 38.13547087602444
_HIGHPASS_Q = 0.5003270373238773


@dataclass(frozen=True)
class LoudnessStats:
    """Summary loudness of a program.

    Attributes:
        integrated_lufs: gated integrated loudness (BS.1770-4 eq. 7); ``-inf`` if no block passes the gates.
        lra_lu: loudness range (EBU Tech 3342); 0.0 when fewer than two short-term values pass the gates.
        max_momentary_lufs: highest 400 ms loudness (EBU Tech 3341 "M"); ``-inf`` for silence or < 400 ms.
        max_short_term_lufs: highest 3 s loudness (EBU Tech 3341 "S"); ``-inf`` for silence or < 3 s.
    """

    integrated_lufs: float
    lra_lu: float
    max_momentary_lufs: float
    max_short_term_lufs: float


@dataclass(frozen=True)
class MeterState:
    """Explicit state of a streaming loudness meter (treat every array as read-only).

    Attributes:
        sample_rate: sample rate in Hz.
        channels: number of channels.
        weights: channel weights G_i of BS.1770-4 eq. 2.
        sos: K-weighting filter as second-order sections (see :func:`k_weighting_sos`).
        zi: filter state, shape ``(2, channels, 2)``, carried between blocks.
        pending: K-weighted squared samples of the incomplete current step, shape ``(channels, n)``.
        steps_done: number of complete 100 ms steps accumulated.
        step_power: chunks of per-step, per-channel mean squares, each ``(k, channels)`` float64; their
            concatenation (see :func:`meter_steps`) is the meter's whole history.
    """

    sample_rate: int
    channels: int
    weights: tuple[float, ...]
    sos: np.ndarray
    zi: np.ndarray
    pending: np.ndarray
    steps_done: int
    step_power: tuple[np.ndarray, ...]


def k_weighting_sos(sample_rate: int) -> np.ndarray:
    """K-weighting filter (BS.1770-4 Annex 1) for any ``sample_rate`` as a scipy ``sos`` array ``(2, 6)``.

    Stage 1 is the high shelf that models the acoustic effect of the head (+4 dB above ~1.7 kHz), stage 2
    the RLB high-pass (~38 Hz). At 48 kHz the coefficients equal BS.1770-4 Tables 1 and 2.
    """
    sample_rate = check_sample_rate(sample_rate, minimum=MIN_SAMPLE_RATE)
    k = math.tan(math.pi * _SHELF_HZ / sample_rate)
    vh = 10.0 ** (_SHELF_GAIN_DB / 20.0)
    vb = vh**_SHELF_VB_EXPONENT
    a0 = 1.0 + k / _SHELF_Q + k * k
    shelf = [
        (vh + vb * k / _SHELF_Q + k * k) / a0,
        2.0 * (k * k - vh) / a0,
        (vh - vb * k / _SHELF_Q + k * k) / a0,
        1.0,
        2.0 * (k * k - 1.0) / a0,
        (1.0 - k / _SHELF_Q + k * k) / a0,
    ]
    k = math.tan(math.pi * _HIGHPASS_HZ / sample_rate)
    a0 = 1.0 + k / _HIGHPASS_Q + k * k
    highpass = [1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / _HIGHPASS_Q + k * k) / a0]
    return np.array([shelf, highpass], dtype=np.float64)


def _sos_kernel() -> Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None:
    """scipy's compiled second-order-sections kernel, loaded without the rest of ``scipy.signal``.

    ``import scipy.signal`` also imports scipy.stats, optimize, sparse, spatial, interpolate and special:
    ~80 MB of resident memory and ~1 s of CPU in every render process, more than a render's whole working
    set. The kernel is one extension module that needs only numpy. None (use ``scipy.signal.sosfilt``)
    where this scipy lays it out differently.
    """
    name = "scipy.signal._sosfilt"
    module = sys.modules.get(name)
    if module is None:
        folder = Path(scipy.__file__).parent / "signal"
        found = [folder / f"_sosfilt{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
        path = next((p for p in found if p.is_file()), None)
        if path is None:
            return None
        try:
            loader = importlib.machinery.ExtensionFileLoader(name, str(path))
            spec = importlib.util.spec_from_file_location(name, path, loader=loader)
            if spec is None:
                return None
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
        except ImportError:
            return None
        sys.modules[name] = module  # a later ``import scipy.signal`` uses this one
    return getattr(module, "_sosfilt", None)


_SOS_KERNEL = _sos_kernel()


def _sosfilt(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.sosfilt(sos, x, axis=-1, zi=zi)`` for ``x`` of shape ``(signals, n)``.

    Same computation and result type: the kernel filters a C-ordered copy of ``x`` in place, its state laid
    out ``(signals, sections, 2)``.
    """
    if _SOS_KERNEL is None:
        from scipy import signal

        return signal.sosfilt(np.array(sos), x, axis=-1, zi=zi)
    dtype = np.result_type(sos, x, zi)
    y = np.array(x, dtype=dtype, order="C")
    state = np.array(np.swapaxes(zi, 0, 1), dtype=dtype, order="C")
    _SOS_KERNEL(np.array(sos, dtype=dtype, order="C"), y, state)
    return y, np.swapaxes(state, 0, 1)


def _channel_weights(channels: int) -> tuple[float, ...]:
    """Channel weights G_i of BS.1770-4 Table 3.

    L, R and C weigh 1.0; surround channels 1.41 (+1.5 dB). For 5.1 in the usual order L, R, C, LFE, Ls, Rs
    the LFE channel is excluded (weight 0). Mono and stereo, the only layouts rendered here, are all 1.0.
    """
    if channels == 5:
        return (1.0, 1.0, 1.0, 1.41, 1.41)
    if channels == 6:
        return (1.0, 1.0, 1.0, 0.0, 1.41, 1.41)
    return (1.0,) * channels


def _step_start(step: int, sample_rate: int) -> int:
    """First frame of 100 ms step ``step``; ``floor`` keeps steps exact at rates not divisible by 10."""
    return step * sample_rate // 10


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _check_weights(weights: Sequence[float], channels: int) -> tuple[float, ...]:
    try:
        out = tuple(float(w) for w in weights)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be a sequence of numbers, got {weights!r}") from None
    if len(out) != channels:
        raise ValueError(f"weights must have one value per channel ({channels}), got {weights!r}")
    if not all(math.isfinite(w) and w >= 0.0 for w in out):
        raise ValueError(f"weights must be finite and >= 0, got {weights!r}")
    return out


def meter_init(sample_rate: int, channels: int, *, weights: Sequence[float] | None = None) -> MeterState:
    """Start a streaming BS.1770-4 meter for ``channels`` channels at ``sample_rate`` Hz (>= 8000).

    ``weights`` are the channel weights G_i of BS.1770-4 eq. 2 (default: Table 3 for the channel count,
    1.0 for mono and stereo). A signal heard identically in two channels can be metered as one channel of
    weight 2.0: eq. 2 sums ``G_i z_i``, so that reading equals the two-channel one at half the cost.
    """
    sample_rate = check_sample_rate(sample_rate, minimum=MIN_SAMPLE_RATE)
    channels = check_frames(channels, "channels", minimum=1)
    return MeterState(
        sample_rate=sample_rate,
        channels=channels,
        weights=_channel_weights(channels) if weights is None else _check_weights(weights, channels),
        sos=_readonly(k_weighting_sos(sample_rate)),
        zi=_readonly(np.zeros((2, channels, 2), dtype=np.float64)),
        pending=_readonly(np.zeros((channels, 0), dtype=np.float64)),
        steps_done=0,
        step_power=(),
    )


def _k_weighted_squares(state: MeterState, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared K-weighted samples ``(channels, n)`` float64 of the float32 block ``x``, and the next ``zi``.

    The filter runs in float64. Channel pairs go through it as one complex signal (left real, right
    imaginary): with real coefficients the real and imaginary parts never mix, so every value is exactly
    what filtering each channel alone gives, but the recursion (latency-bound) runs once per pair.
    """
    n, channels = x.shape
    if channels % 2:
        y, zf = _sosfilt(state.sos, x.T, state.zi)
        np.square(y, out=y)
        return y, zf
    pairs = np.ascontiguousarray(x).view(np.complex64).T  # (channels / 2, n): channel 2k real, 2k + 1 imag
    zi = state.zi[:, 0::2, :] + 1j * state.zi[:, 1::2, :]
    yc, zfc = _sosfilt(state.sos, pairs, zi)
    # Squared in place (no block-sized temporaries: in a VM their page faults cost more than the maths),
    # then (pairs, n, [re, im]) seen as (channels, n); a view for stereo.
    y = yc.view(np.float64)
    np.square(y, out=y)
    y = y.reshape(channels // 2, n, 2).transpose(0, 2, 1).reshape(channels, n)
    zf = np.empty(state.zi.shape, dtype=np.float64)
    zf[:, 0::2, :] = zfc.real
    zf[:, 1::2, :] = zfc.imag
    return y, zf


def meter_update(state: MeterState, block: np.ndarray) -> MeterState:
    """Fold a ``(frames, channels)`` block into the meter and return the new state."""
    if not isinstance(state, MeterState):
        raise ValueError(f"state must be a MeterState, got {type(state).__name__}")
    x = as_frames(block, "block", channels=state.channels)
    if x.shape[0] == 0:
        return state
    held = state.pending.shape[1]
    sr = state.sample_rate
    origin = _step_start(state.steps_done, sr)  # first frame of the pending samples
    available = origin + held + x.shape[0]
    # Steps 0 .. K-1 are complete when step K starts at or before the end: floor(K * sr / 10) <= available.
    n_new = (10 * (available + 1) - 1) // sr - state.steps_done
    # Step boundaries in the frames of the block (the first step began in the pending samples when any are held).
    bounds = (state.steps_done + np.arange(n_new + 1, dtype=np.int64)) * sr // 10 - origin - held
    if _native.lib is not None:
        return _native_update(state, x, held, bounds)
    # zi makes the filter continuous across blocks.
    y, zf = _k_weighted_squares(state, x)
    if n_new == 0:
        pending = np.concatenate([state.pending, y], axis=1) if held else y
        return dataclasses.replace(state, zi=_readonly(zf), pending=_readonly(pending))
    # Each step is summed in one reduction over exactly its own samples, whatever block they came in.
    sums = np.empty((state.channels, n_new), dtype=np.float64)
    first = 0
    if held:
        head = np.concatenate([state.pending, y[:, : bounds[1]]], axis=1)
        sums[:, :1] = np.add.reduceat(head, [0], axis=1)
        first = 1
    if n_new > first:
        sums[:, first:] = np.add.reduceat(y[:, bounds[first] : bounds[-1]], bounds[first:-1] - bounds[first], axis=1)
    power = (sums / np.diff(bounds)).T  # mean square per step and channel: z_i of BS.1770-4 eq. 1
    return dataclasses.replace(
        state,
        zi=_readonly(zf),
        pending=_readonly(np.ascontiguousarray(y[:, bounds[-1] :])),
        steps_done=state.steps_done + n_new,
        step_power=(*state.step_power, _readonly(np.ascontiguousarray(power))),
    )


def _native_update(state: MeterState, x: np.ndarray, held: int, bounds: np.ndarray) -> MeterState:
    """:func:`meter_update` with the C kernel: filtered, squared and summed per step in one pass; only the
    incomplete last step's squares are kept (as ``pending``, like the numpy path)."""
    n_new = len(bounds) - 1
    # a step that began in the pending samples goes on from their sum in frame order (cumsum is sequential),
    # as one running sum over the step would: the sums do not depend on where blocks were cut
    carry = np.cumsum(state.pending, axis=1)[:, -1] if held and n_new else np.zeros(state.channels)
    sums, tail, zf = _native.kweight(x, state.sos, state.zi, np.maximum(bounds, 0), carry)
    if n_new == 0:
        pending = np.concatenate([state.pending, tail], axis=1) if held else tail
        return dataclasses.replace(state, zi=_readonly(zf), pending=_readonly(pending))
    power = (sums / np.diff(bounds)).T
    return dataclasses.replace(
        state,
        zi=_readonly(zf),
        pending=_readonly(tail),
        steps_done=state.steps_done + n_new,
        step_power=(*state.step_power, _readonly(np.ascontiguousarray(power))),
    )


def meter_steps(state: MeterState) -> np.ndarray:
    """Per-100 ms-step K-weighted mean square per channel, shape ``(steps, channels)`` float64.

    Step ``k`` covers frames ``floor(k * sr / 10)`` up to the next step; the incomplete last step is not
    included. Its length is the length a ``step_mask`` for :func:`meter_result` should have.
    """
    if not state.step_power:
        return np.zeros((0, state.channels), dtype=np.float64)
    return np.concatenate(state.step_power, axis=0)


def _power_to_lufs(power: np.ndarray) -> np.ndarray:
    """BS.1770-4 eq. 2: ``-0.691 + 10 log10(power)``, with ``-inf`` for zero power and no warnings."""
    out = np.full(power.shape, -np.inf, dtype=np.float64)
    positive = power > 0.0
    out[positive] = _OFFSET_LUFS + 10.0 * np.log10(power[positive])
    return out


def _window_power(steps: np.ndarray, lengths: np.ndarray, weights: np.ndarray, width: int) -> np.ndarray:
    """Channel-weighted mean square of every window of ``width`` consecutive steps (sum_i G_i z_ij)."""
    if steps.shape[0] < width:
        return np.zeros(0, dtype=np.float64)
    # channels weighted first, then windows summed over one series: the same rounding for any channel layout
    # (a mono stem of weight 2 reads exactly as the same signal in two channels)
    energy = (steps * weights).sum(axis=1) * lengths
    window_energy = np.lib.stride_tricks.sliding_window_view(energy, width).sum(axis=-1)
    window_frames = np.lib.stride_tricks.sliding_window_view(lengths, width).sum(axis=-1)
    return window_energy / window_frames


def _gated_mean(power: np.ndarray) -> float:
    """Power mean of ``power`` as LUFS (BS.1770-4 eq. 5/7); ``-inf`` for an empty selection."""
    if power.size == 0:
        return -math.inf
    return float(_power_to_lufs(np.array([power.mean()]))[0])


def _gate(block_power: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """The blocks that pass both gates of BS.1770-4 (eqs. 4-6), among the ``counted`` ones."""
    block_lufs = _power_to_lufs(block_power)
    above_absolute = counted & (block_lufs > _ABSOLUTE_GATE_LUFS)  # eq. 4: J_g for Gamma_a
    if not above_absolute.any():
        return above_absolute
    relative_gate = _gated_mean(block_power[above_absolute]) + _RELATIVE_GATE_LU  # eqs. 5-6: Gamma_r
    return above_absolute & (block_lufs > relative_gate)


def _integrated(block_power: np.ndarray, counted: np.ndarray) -> float:
    """Two-stage gated integrated loudness (BS.1770-4 eqs. 4-7)."""
    return _gated_mean(block_power[_gate(block_power, counted)])  # eq. 7: power mean before the log


def _loudness_range(short_term_power: np.ndarray) -> float:
    """EBU Tech 3342 loudness range of a series of 3 s short-term powers, in LU."""
    lufs = _power_to_lufs(short_term_power)
    above_absolute = lufs > _ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return 0.0
    relative_gate = _gated_mean(short_term_power[above_absolute]) + _LRA_RELATIVE_GATE_LU
    gated = lufs[above_absolute & (lufs > relative_gate)]
    if gated.size < 2:
        return 0.0
    low, high = np.percentile(gated, [_LRA_LOW_PERCENTILE, _LRA_HIGH_PERCENTILE])
    return float(max(high - low, 0.0))


def _block_powers(state: MeterState, width: int = _BLOCK_STEPS) -> np.ndarray:
    steps = meter_steps(state)
    idx = np.arange(steps.shape[0] + 1, dtype=np.int64)
    lengths = np.diff(idx * state.sample_rate // 10).astype(np.float64)
    return _window_power(steps, lengths, np.asarray(state.weights, dtype=np.float64), width)


def gated_blocks(state: MeterState) -> np.ndarray:
    """One bool per 400 ms gating block (indexed by its first 100 ms step): does it pass both gates?

    These are exactly the blocks the integrated loudness of this signal averages. Passed to another
    meter's :func:`meter_result` as ``block_mask`` (shifted to that signal's timeline), they measure that
    signal over the same moments, e.g. a delivered mix over the blocks where its voice stem spoke.
    """
    power = _block_powers(state)
    return _gate(power, np.ones(power.shape[0], dtype=bool))


def meter_result(
    state: MeterState, *, step_mask: np.ndarray | None = None, block_mask: np.ndarray | None = None
) -> LoudnessStats:
    """Loudness statistics of everything fed to the meter so far.

    Args:
        state: the meter state.
        step_mask: optional bool per 100 ms step (see :func:`meter_steps`). When given, a 400 ms gating
            block counts toward the integrated loudness only if all four of its steps are masked in (used to
            measure speech loudness where a voice is active). A shorter mask is padded with False, a longer
            one truncated. The mask does not affect LRA or the maxima.
        block_mask: optional bool per 400 ms gating block (see :func:`gated_blocks`), padded and truncated
            the same way; only those blocks count toward the integrated loudness.
    """
    if not isinstance(state, MeterState):
        raise ValueError(f"state must be a MeterState, got {type(state).__name__}")
    steps = meter_steps(state)
    n_steps = steps.shape[0]
    sr = state.sample_rate
    idx = np.arange(n_steps + 1, dtype=np.int64)
    lengths = np.diff(idx * sr // 10).astype(np.float64)
    weights = np.asarray(state.weights, dtype=np.float64)

    block_power = _window_power(steps, lengths, weights, _BLOCK_STEPS)
    counted = np.ones(block_power.shape[0], dtype=bool)
    if step_mask is not None:
        mask = np.asarray(step_mask)
        if mask.ndim != 1 or mask.dtype != np.bool_:
            raise ValueError(f"step_mask must be a 1-D bool array, got shape {mask.shape} dtype {mask.dtype}")
        full = np.zeros(n_steps, dtype=bool)
        full[: min(n_steps, mask.shape[0])] = mask[:n_steps]
        if block_power.shape[0]:
            counted = np.lib.stride_tricks.sliding_window_view(full, _BLOCK_STEPS).all(axis=-1)
    if block_mask is not None:
        blocks = np.asarray(block_mask)
        if blocks.ndim != 1 or blocks.dtype != np.bool_:
            raise ValueError(f"block_mask must be a 1-D bool array, got shape {blocks.shape} dtype {blocks.dtype}")
        chosen = np.zeros(block_power.shape[0], dtype=bool)
        chosen[: min(chosen.shape[0], blocks.shape[0])] = blocks[: chosen.shape[0]]
        counted = counted & chosen
    short_term_power = _window_power(steps, lengths, weights, _SHORT_TERM_STEPS)

    momentary = _power_to_lufs(block_power)
    short_term = _power_to_lufs(short_term_power)
    return LoudnessStats(
        integrated_lufs=_integrated(block_power, counted),
        lra_lu=_loudness_range(short_term_power),
        max_momentary_lufs=float(momentary.max()) if momentary.size else -math.inf,
        max_short_term_lufs=float(short_term.max()) if short_term.size else -math.inf,
    )


def loudness_stats(samples: np.ndarray, sample_rate: int) -> LoudnessStats:
    """One-shot :class:`LoudnessStats` of a ``(frames, channels)`` signal."""
    x = as_frames(samples)
    return meter_result(meter_update(meter_init(sample_rate, x.shape[1]), x))


def integrated_loudness(samples: np.ndarray, sample_rate: int) -> float:
    """One-shot gated integrated loudness (BS.1770-4) of a ``(frames, channels)`` signal, in LUFS."""
    return loudness_stats(samples, sample_rate).integrated_lufs


def meter_concat(first: MeterState, second: MeterState, *, skip_steps: int = 0) -> MeterState:
    """The meter of a stream measured as two parts at once: ``first``'s part followed by ``second``'s.

    ``first`` must end on a 100 ms step boundary (no pending samples). ``second`` began ``skip_steps`` steps
    before that boundary (a pre-roll in which its K-weighting filter settles); those steps are dropped. Both
    meters' step grids must line up, i.e. ``second`` started on a frame that is a step boundary of the whole
    stream (a whole number of seconds is one for every rate). The result equals the state of one meter fed
    the whole stream, up to the filter's settling in the pre-roll (well under 1e-6 LU after one second).
    """
    for name, value in (("first", first), ("second", second)):
        if not isinstance(value, MeterState):
            raise ValueError(f"{name} must be a MeterState, got {type(value).__name__}")
    if (first.sample_rate, first.channels, first.weights) != (second.sample_rate, second.channels, second.weights):
        raise ValueError("meters differ in sample rate, channels or weights")
    if first.pending.shape[1]:
        raise ValueError(f"first must end on a step boundary; it holds {first.pending.shape[1]} pending frames")
    if not 0 <= skip_steps <= second.steps_done:
        raise ValueError(f"skip_steps must be within 0..{second.steps_done}, got {skip_steps!r}")
    kept = meter_steps(second)[skip_steps:]
    return dataclasses.replace(
        second,
        steps_done=first.steps_done + len(kept),
        step_power=(*first.step_power, _readonly(np.ascontiguousarray(kept))) if len(kept) else first.step_power,
    )
