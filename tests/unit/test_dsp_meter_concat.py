"""A stream metered as parts at once (meter_concat) equals one meter over the whole stream."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest

from mindscript.dsp import loudness

SR = 44100


def _program(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(11)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    swell = (0.2 + 0.8 * (np.sin(2 * np.pi * t / 17) > 0))[:, None]  # loud and quiet stretches: the gates matter
    x = 0.1 * rng.standard_normal((n, 2)) * swell + 0.05 * np.sin(2 * np.pi * 440 * t)[:, None]
    return x.astype(np.float32)


def _meter(x: np.ndarray, block: int = 40000) -> loudness.MeterState:
    m = loudness.meter_init(SR, 2)
    for s in range(0, len(x), block):
        m = loudness.meter_update(m, x[s:s + block])
    return m


@pytest.mark.parametrize("cuts", [[60], [20, 47, 81]])
def test_parts_with_a_second_of_preroll_equal_one_pass(cuts: list[int]) -> None:
    x = _program(100.0)
    whole = _meter(x)
    bounds = [0, *(c * SR for c in cuts), len(x)]
    meter = _meter(x[: bounds[1]])
    for a, b in zip(bounds[1:-1], bounds[2:], strict=True):
        part = _meter(x[a - SR:b])  # one second of pre-roll
        meter = loudness.meter_concat(meter, part, skip_steps=10)
    assert meter.steps_done == whole.steps_done
    np.testing.assert_allclose(loudness.meter_steps(meter), loudness.meter_steps(whole), rtol=1e-6, atol=1e-12)
    one, parts = loudness.meter_result(whole), loudness.meter_result(meter)
    assert abs(one.integrated_lufs - parts.integrated_lufs) < 1e-4
    assert abs(one.lra_lu - parts.lra_lu) < 1e-3
    reference = pyloudnorm.Meter(SR).integrated_loudness(x.astype(np.float64))
    assert abs(parts.integrated_lufs - reference) < 0.05


def test_concat_refuses_a_first_part_that_does_not_end_on_a_step() -> None:
    x = _program(3.0)
    with pytest.raises(ValueError, match="step boundary"):
        loudness.meter_concat(_meter(x[:1000]), _meter(x))
    with pytest.raises(ValueError, match="skip_steps"):
        loudness.meter_concat(_meter(x[:SR]), _meter(x[:SR]), skip_steps=11)
