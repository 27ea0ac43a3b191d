"""True peak (BS.1770-4 Annex 2): inter-sample peaks, alignment, streaming equals one-shot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mindscript.dsp.envelopes import fade_gain
from mindscript.dsp.truepeak import (
    LATENCY_FRAMES,
    oversampled_peaks,
    true_peak_dbtp,
    truepeak_db,
    truepeak_flush,
    truepeak_init,
    truepeak_update,
)


def _quarter_rate_sine(amplitude: float, n: int, *, fade: int = 0) -> np.ndarray:
    """fs/4 sine with a 45 degree phase: every sample is +-0.707 A, the waveform peaks between samples."""
    k = np.arange(n)
    x = amplitude * np.sin(np.pi / 2 * k + np.pi / 4)
    if fade:
        x = x * fade_gain(0, n, n, fade, fade)
    return np.repeat(x.astype(np.float32)[:, None], 2, axis=1)


def _envelope(x: np.ndarray, sizes: list[int]) -> np.ndarray:
    state = truepeak_init(x.shape[1])
    parts = []
    i = 0
    k = 0
    while i < x.shape[0]:
        size = sizes[k % len(sizes)]
        env, state = oversampled_peaks(state, x[i : i + size])
        parts.append(env)
        i += size
        k += 1
    env, state = truepeak_flush(state)
    parts.append(env)
    return np.concatenate(parts)


@pytest.mark.parametrize("amplitude", [1.0, 0.5, 0.1])
@pytest.mark.parametrize("sr", [44100, 48000])
def test_inter_sample_peak_of_quarter_rate_sine(amplitude: float, sr: int) -> None:
    x = _quarter_rate_sine(amplitude, sr, fade=2000)  # faded: a hard onset has its own Gibbs overshoot
    sample_peak_db = 20 * math.log10(float(np.abs(x).max()))
    assert abs(sample_peak_db - 20 * math.log10(amplitude * math.sqrt(0.5))) < 0.01
    assert abs(true_peak_dbtp(x, sr) - 20 * math.log10(amplitude)) < 0.2


def test_true_peak_never_below_sample_peak() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((20000, 2)) * 0.2).astype(np.float32)
    env = _envelope(x, [20000])
    assert env.shape == (20000,)
    assert np.all(env >= np.abs(x).max(axis=1))  # phase 0 is the sample itself


def test_envelope_is_aligned_to_input_frames() -> None:
    x = np.zeros((1000, 1), np.float32)
    x[500, 0] = 1.0
    env = _envelope(x, [1000])
    assert int(np.argmax(env)) == 500 and env[500] == 1.0
    # The impulse rings (interpolated values) only within the reach of the interpolator; beyond it only
    # FFT rounding (~1e-9) remains.
    assert np.all(env[: 500 - LATENCY_FRAMES] < 1e-6) and np.all(env[501 + LATENCY_FRAMES :] < 1e-6)


@pytest.mark.parametrize("sizes", [[1], [7, 1000], [4096], [65536], [33, 17, 5000, 12345]])
def test_streaming_equals_one_shot(sizes: list[int]) -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((50000, 2)) * 0.3).astype(np.float32)
    if sizes == [1]:
        x = x[:3000]
    one = _envelope(x, [x.shape[0]])
    blocked = _envelope(x, sizes)
    assert blocked.shape == (x.shape[0],)
    assert np.max(np.abs(blocked - one)) <= 1e-6


def test_streaming_max_and_silence() -> None:
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((30000, 2)) * 0.25).astype(np.float32)
    state = truepeak_init(2)
    for i in range(0, 30000, 4000):
        state = truepeak_update(state, x[i : i + 4000])
    assert abs(truepeak_db(state) - true_peak_dbtp(x, 48000)) < 1e-5
    assert true_peak_dbtp(np.zeros((100, 2), np.float32), 48000) == -math.inf
    assert true_peak_dbtp(np.zeros((0, 2), np.float32), 48000) == -math.inf


def test_rejects_bad_blocks() -> None:
    with pytest.raises(ValueError, match=r"\(10, 3\)"):
        oversampled_peaks(truepeak_init(2), np.zeros((10, 3), np.float32))
    _, done = truepeak_flush(truepeak_init(1))
    with pytest.raises(ValueError, match="flushed"):
        oversampled_peaks(done, np.zeros((10, 1), np.float32))


def _speechy(n: int, seed: int) -> np.ndarray:
    """Noise with a strongly varying level (bursts 30 dB apart), stereo."""
    rng = np.random.default_rng(seed)
    level = np.repeat(10 ** (rng.uniform(-40, 0, size=n // 2000 + 1) / 20), 2000)[:n]
    return (rng.standard_normal((n, 2)) * 0.3 * level[:, None]).astype(np.float32)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_running_max_skips_only_what_cannot_matter(seed: int) -> None:
    x = _speechy(120000, seed)
    full = float(_envelope(x, [x.shape[0]]).max())
    for size in (1000, 65536, x.shape[0]):
        state = truepeak_init(2)
        for i in range(0, x.shape[0], size):
            state = truepeak_update(state, x[i : i + size])
        assert abs(truepeak_db(state) - 20 * math.log10(full)) < 1e-5
    # the loudest burst first, then quieter ones: later blocks are skipped, the result is the same
    loud_first = np.concatenate([x[:5000] * 4, x])
    full = float(_envelope(loud_first, [loud_first.shape[0]]).max())
    assert abs(true_peak_dbtp(loud_first, 48000) - 20 * math.log10(full)) < 1e-5


@pytest.mark.parametrize("floor_db", [-6.0, -12.0, -20.0])
def test_floor_leaves_every_value_above_it_exact(floor_db: float) -> None:
    x = _speechy(100000, 6)
    floor = 10 ** (floor_db / 20)
    full = _envelope(x, [x.shape[0]])
    state = truepeak_init(2)
    parts = []
    for i in range(0, x.shape[0], 7000):
        env, state = oversampled_peaks(state, x[i : i + 7000], floor=floor)
        parts.append(env)
    parts.append(truepeak_flush(state)[0])
    floored = np.concatenate(parts)
    assert floored.shape == full.shape
    above = full > floor * 1.0001
    assert above.any() and not above.all()
    assert np.max(np.abs(floored[above] - full[above])) <= 1e-6  # exact where it matters
    assert np.all(floored[~above] <= floor * 1.0001)  # elsewhere at most the floor...
    assert np.all(floored >= np.abs(x).max(axis=1) - 1e-7)  # ...and never below the sample peak
    with pytest.raises(ValueError, match="-1.0"):
        oversampled_peaks(truepeak_init(2), x[:10], floor=-1.0)


def _signals(n: int) -> dict[str, np.ndarray]:
    """``(channels, n)`` float32: noise and the worst shapes for a smoothness bound, and smooth audio."""
    rng = np.random.default_rng(11)
    t = np.arange(n) / 44100
    swell = 0.2 + 0.8 * np.abs(np.sin(2 * np.pi * 0.7 * t))
    chord = sum(np.sin(2 * np.pi * f * t + k) / (k + 1) for k, f in enumerate((200.0, 207.0, 528.0, 1760.0)))
    return {
        "noise": rng.standard_normal((2, n)),
        "near-nyquist sines": np.stack([np.sin(2 * np.pi * 21000 * t), np.sin(2 * np.pi * 22000 * t + 1)]),
        "quarter-rate square": np.stack([np.sign(np.sin(2 * np.pi * 11025 * t + 0.785))] * 2),
        "alternating": np.stack([(-1.0) ** np.arange(n)] * 2),
        "swelling chord": np.stack([swell * chord, 0.7 * swell * chord]) / 2.5,
        "mono voice-like": (np.sin(2 * np.pi * 130 * t) * swell + 0.01 * rng.standard_normal(n))[None],
    }


@pytest.mark.parametrize("name", list(_signals(10)))
def test_windows_left_out_could_not_exceed_the_floor(name: str) -> None:
    # Every window whose interpolated values reach over the floor is among those interpolated, whichever of
    # the two bounds decides; on smooth audio the smoothness bound leaves most windows out.
    from mindscript.dsp import truepeak

    rows = (_signals(120_000)[name] * 0.5).astype(np.float32)
    m = rows.shape[1] - 31
    windows = np.arange(-(-m // truepeak._STEP))
    values = truepeak._interpolated(truepeak._pad_rows(rows, m), windows)
    last = m - windows[-1] * truepeak._STEP
    window_max = np.append(values[:-1].max(axis=1), values[-1, :last].max())
    a = truepeak._frame_peaks(rows)
    for floor in np.quantile(window_max, [0.05, 0.5, 0.9, 0.999]):
        kept, _ = truepeak._over(rows, a, m, float(floor))
        assert np.isin(np.flatnonzero(window_max > floor), kept).all()
        if name in ("swelling chord", "mono voice-like") and floor == np.quantile(window_max, 0.9):
            by_peak_alone = np.count_nonzero(truepeak._span_maxima(a, m) * truepeak._L1 > floor)
            assert kept.size < 0.3 * by_peak_alone  # here 27 of 189 and 56 of 214 windows
