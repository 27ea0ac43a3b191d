"""True-peak limiter: ceiling, transparency, alignment, exact length, streaming equals one-shot."""

from __future__ import annotations

import numpy as np
import pytest

from mindscript.dsp.limiter import (
    LimiterParams,
    limiter_flush,
    limiter_init,
    limiter_latency,
    limiter_process,
)
from mindscript.dsp.truepeak import LATENCY_FRAMES, oversampled_peaks, true_peak_dbtp, truepeak_flush, truepeak_init

SR = 44100


def _limit(x: np.ndarray, sizes: list[int] | None = None, params: LimiterParams | None = None) -> np.ndarray:
    state = limiter_init(params or LimiterParams(SR), x.shape[1])
    sizes = sizes or [max(1, x.shape[0])]
    parts = []
    i = 0
    k = 0
    while i < x.shape[0]:
        out, state = limiter_process(state, x[i : i + sizes[k % len(sizes)]])
        parts.append(out)
        i += sizes[k % len(sizes)]
        k += 1
    out, state = limiter_flush(state)
    parts.append(out)
    return np.concatenate(parts)


def _music_like(seconds: float, over_db: float, seed: int = 0) -> np.ndarray:
    """Sines plus noise bursts, scaled so the true peak is ``over_db`` above -1 dBTP."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    x = np.zeros((n, 2))
    x += 0.4 * np.sin(2 * np.pi * 110 * t)[:, None] + 0.2 * np.sin(2 * np.pi * 3150 * t + 0.3)[:, None]
    x += (np.sin(2 * np.pi * 0.9 * t) > 0.4)[:, None] * rng.standard_normal((n, 2)) * 0.3
    x[: n // 10] *= 0.05
    x = x.astype(np.float32)
    return (x * 10 ** ((-1.0 + over_db - true_peak_dbtp(x, SR)) / 20)).astype(np.float32)


def test_quarter_rate_sine_at_0_dbtp_is_brought_under_the_ceiling() -> None:
    k = np.arange(SR)
    x = np.repeat(np.sin(np.pi / 2 * k + np.pi / 4).astype(np.float32)[:, None], 2, axis=1)
    assert float(np.abs(x).max()) < 0.708  # sample peak -3 dB, true peak 0 dBTP
    y = _limit(x)
    assert y.shape == x.shape
    assert true_peak_dbtp(y, SR) <= -1.0


@pytest.mark.parametrize("sr", [44100, 48000])
def test_loud_music_is_limited_to_the_ceiling(sr: int) -> None:
    x = _music_like(6.0, 6.0)
    assert true_peak_dbtp(x, sr) > 4.9
    y = _limit(x, params=LimiterParams(sr))
    assert y.shape == x.shape and y.dtype == np.float32
    assert true_peak_dbtp(y, sr) <= -1.0
    # Only what needs it is reduced: the quiet intro passes untouched.
    assert np.array_equal(y[: SR // 2], x[: SR // 2])


def test_other_ceiling() -> None:
    x = _music_like(3.0, 8.0, seed=4)
    y = _limit(x, params=LimiterParams(SR, ceiling_dbtp=-2.0, lookahead_ms=2.0, release_ms=200.0))
    assert true_peak_dbtp(y, SR) <= -2.0


def test_quiet_signal_passes_bit_identical() -> None:
    x = _music_like(3.0, -0.5)
    y = _limit(x, sizes=[1000, 333])
    assert np.array_equal(y, x)


def test_output_is_aligned_with_input() -> None:
    x = _music_like(4.0, 1.5, seed=2)  # mildly limited
    y = _limit(x)
    assert not np.array_equal(x, y)
    a, b = x[:, 0].astype(np.float64), y[:, 0].astype(np.float64)
    lags = range(-50, 51)
    corr = [np.dot(a[50:-50], np.roll(b, lag)[50:-50]) for lag in lags]
    assert list(lags)[int(np.argmax(corr))] == 0


@pytest.mark.parametrize("sizes", [[1000], [4096], [65536], [1, 2, 3, 5000, 77], [100]])
def test_streaming_equals_one_shot(sizes: list[int]) -> None:
    x = _music_like(3.0, 6.0, seed=3)
    if sizes == [1, 2, 3, 5000, 77]:
        x = x[:40000]
    one = _limit(x)
    blocked = _limit(x, sizes=sizes)
    assert blocked.shape == x.shape
    assert np.max(np.abs(blocked - one)) <= 1e-6


def test_latency_and_short_inputs() -> None:
    params = LimiterParams(SR)
    latency = limiter_latency(params)
    state = limiter_init(params, 2)
    out, state = limiter_process(state, np.zeros((latency + 10, 2), np.float32))
    assert out.shape == (10, 2)
    rest, _ = limiter_flush(state)
    assert rest.shape == (latency, 2)
    for n in (0, 1, 5, latency - 1):
        assert _limit(np.full((n, 2), 0.99, np.float32)).shape == (n, 2)


def test_parameter_validation_quotes_the_value() -> None:
    with pytest.raises(ValueError, match="-5"):
        LimiterParams(SR, lookahead_ms=-5.0)
    with pytest.raises(ValueError, match=r"\(10, 1\)"):
        limiter_process(limiter_init(LimiterParams(SR), 2), np.zeros((10, 1), np.float32))


def _reference_limit(x: np.ndarray, params: LimiterParams) -> np.ndarray:
    """The gain computer of the module docstring written out plainly (one shot, loops, no sparsity)."""
    head, state = oversampled_peaks(truepeak_init(x.shape[1]), x)
    env = np.concatenate([head, truepeak_flush(state)[0]]).astype(np.float64)
    sr, n = params.sample_rate, x.shape[0]
    look = max(1, round(params.lookahead_ms * sr / 1000.0))
    k = LATENCY_FRAMES
    ceiling_db = params.ceiling_dbtp - 0.05
    over = env > np.float32(10 ** (ceiling_db / 20))
    required = np.where(over, 20 * np.log10(np.maximum(env, 1e-30)) - ceiling_db, 0.0)
    padded = np.concatenate([np.zeros(look + 2 * k), required, np.zeros(look + 2 * k)])
    # hold[i] = max(required[i - K .. i + L + K]) for frames i = -L .. n - 1 (zeros outside the stream)
    hold = np.array([padded[i + look + k : i + 2 * look + 3 * k + 1].max() for i in range(-look, n)])
    b1 = (look + 2) // 2
    weights = np.convolve(np.ones(b1) / b1, np.ones(look + 2 - b1) / (look + 2 - b1))  # L + 1 taps
    attack = np.convolve(hold, weights[::-1], mode="valid")  # attack[i] averages hold[i - L .. i]
    a = np.exp(-1000.0 / (params.release_ms * sr))
    u = np.zeros(n)
    prev = 0.0
    for i in range(n):
        prev = max(attack[i], a * prev)
        u[i] = prev
    gain = np.where(u > 1e-6, 10 ** (-u / 20), 1.0).astype(np.float32)
    return x * gain[:, None]


@pytest.mark.parametrize(("over_db", "seed", "sizes"), [(6.0, 5, [4096]), (1.0, 6, [65536]), (12.0, 7, [777, 5000])])
def test_matches_a_plain_reference_of_the_gain_computer(over_db: float, seed: int, sizes: list[int]) -> None:
    # The limiter only computes where a reduction can be nonzero and skips oversampling under the ceiling;
    # the plain computation over every frame must give the same output.
    x = _music_like(1.5, over_db, seed=seed)
    x[SR // 2 : SR // 2 + 3000] *= 4.0  # an isolated loud burst inside a quiet passage
    params = LimiterParams(SR, ceiling_dbtp=-1.5)
    y = _limit(x, sizes=sizes, params=params)
    ref = _reference_limit(x, params)
    assert not np.array_equal(y, x)
    assert np.max(np.abs(y - ref)) <= 1e-6
