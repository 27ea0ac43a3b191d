"""Tones: exact frequencies, streaming equals one-shot, no clicks at block joins, long-program phase."""

from __future__ import annotations

import numpy as np
import pytest

from mindscript.dsp.tones import ToneParams, binaural, solfeggio, tone_block


def _peak_hz(x: np.ndarray, sample_rate: int) -> float:
    """Frequency of the strongest component, far finer than an FFT bin.

    Coarse: the Hann-windowed FFT peak. Fine: demodulate by that frequency, average 10 ms blocks (which
    removes the image at twice the frequency) and fit a line to the unwrapped phase; its slope is the
    residual frequency.
    """
    n = x.shape[0]
    spec = np.abs(np.fft.rfft(x * np.hanning(n)))
    coarse = (int(np.argmax(spec[1:])) + 1) * sample_rate / n
    t = np.arange(n) / sample_rate
    z = x * np.exp(-2j * np.pi * coarse * t)
    block = sample_rate // 100
    m = n // block
    zb = z[: m * block].reshape(m, block).mean(axis=1)
    tb = t[: m * block].reshape(m, block).mean(axis=1)
    slope = np.polyfit(tb, np.unwrap(np.angle(zb)), 1)[0]
    return float(coarse + slope / (2 * np.pi))


def test_solfeggio_528_hz_peak_is_exact() -> None:
    sr = 44100
    x = tone_block(solfeggio(528.0, 0.5), sr, 0, 60 * sr)
    assert x.dtype == np.float32 and x.shape == (60 * sr, 2)
    assert np.array_equal(x[:, 0], x[:, 1])
    assert abs(_peak_hz(x[:, 0].astype(np.float64), sr) - 528.0) < 0.01
    assert abs(float(np.abs(x).max()) - 0.5) < 1e-3


@pytest.mark.parametrize(
    ("sr", "carrier", "beat"), [(44100, 200.0, 7.0), (48000, 200.0, 7.83), (44100, 136.1, 4.5)]
)
def test_binaural_ears_and_beat(sr: int, carrier: float, beat: float) -> None:
    x = tone_block(binaural(carrier, beat, 0.3), sr, 0, 30 * sr).astype(np.float64)
    left, right = _peak_hz(x[:, 0], sr), _peak_hz(x[:, 1], sr)
    assert abs(left - carrier) < 0.01
    assert abs(right - (carrier + beat)) < 0.01
    assert abs((right - left) - beat) < 0.01


@pytest.mark.parametrize("sizes", [[1000], [4096], [65536], "random"])
def test_streaming_equals_one_shot(sizes: list[int] | str) -> None:
    sr, total = 48000, 300_000
    params = binaural(200.0, 7.83, 0.8)
    one = tone_block(params, sr, 0, total)
    if sizes == "random":
        rng = np.random.default_rng(3)
        cuts = np.sort(rng.choice(np.arange(1, total), size=40, replace=False))
        bounds = [0, *cuts.tolist(), total]
    else:
        bounds = [*range(0, total, sizes[0]), total]
    parts = [tone_block(params, sr, a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    blocked = np.concatenate(parts)
    assert blocked.shape == one.shape
    assert np.max(np.abs(blocked - one)) <= 1e-6
    # No discontinuity at the joins: the largest step across a join is no larger than anywhere else.
    steps = np.abs(np.diff(blocked, axis=0))
    joins = np.array(bounds[1:-1]) - 1
    assert steps[joins].max() <= steps.max() + 1e-6


def test_phase_exact_two_hours_in() -> None:
    sr, hz = 48000, 207.83
    start = 2 * 3600 * sr
    x = tone_block(ToneParams(hz, hz, 1.0), sr, start, 2000)[:, 0].astype(np.float64)
    # Reference with exact rational arithmetic: hz = 20783/100.
    n = np.arange(start, start + 2000, dtype=np.int64)
    cycles = (20783 * n) % (100 * sr) / (100 * sr)
    assert np.max(np.abs(x - np.sin(2 * np.pi * cycles))) < 1e-5


def test_invalid_parameters_are_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="-3"):
        ToneParams(-3.0, 200.0, 0.5)
    with pytest.raises(ValueError, match="1.5"):
        solfeggio(528.0, 1.5)
    with pytest.raises(ValueError, match="30000"):
        tone_block(solfeggio(30000.0, 0.5), 44100, 0, 10)


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize("hz", [174.0, 207.0, 528.0, 963.0])
@pytest.mark.parametrize("start", [0, 3675 * 7 + 11, 2 * 3600 * 48000 + 5])
def test_whole_hertz_tones_copied_from_their_period_equal_the_synthesized_sine(sr: int, hz: float,
                                                                                start: int) -> None:
    from mindscript.dsp import tones

    assert tones._periodic(hz, sr, 0.5) is not None  # these take the table path
    n = 100_000  # longer than a chunk: the table is read at every offset
    copied = tone_block(ToneParams(left_hz=hz, right_hz=hz, amplitude=0.5), sr, start, n)[:, 0]
    synthesized = np.concatenate([tones._sine(hz, sr, start + lo, min(tones._CHUNK, n - lo), 0.5)
                                  for lo in range(0, n, tones._CHUNK)])
    assert float(np.max(np.abs(copied - synthesized))) < 2e-7  # float32 rounding of either
    assert tones._periodic(hz + 0.5, sr, 0.5) is None  # a fractional frequency is synthesized
