"""Fades, crossfades and gain helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mindscript.dsp.envelopes import equal_power_crossfade, fade_gain
from mindscript.dsp.gain import db_to_gain, gain_to_db, mono_to_stereo


def test_fade_gain_shape_and_ends() -> None:
    g = fade_gain(0, 1000, 1000, 100, 200)
    assert g.dtype == np.float32 and g.shape == (1000,)
    assert g[0] == 0.0
    assert np.all(g[100:800] == 1.0)
    assert np.all(np.diff(g[:101]) >= 0) and np.all(np.diff(g[800:]) <= 0)
    assert g[-1] < 1e-3
    assert abs(g[50] - 0.5) < 1e-6  # raised cosine passes 0.5 at the middle of the fade


def test_fade_gain_blockwise_equals_one_shot() -> None:
    total = 10_000
    one = fade_gain(0, total, total, 1234, 2345)
    parts = [fade_gain(s, min(777, total - s), total, 1234, 2345) for s in range(0, total, 777)]
    assert np.array_equal(np.concatenate(parts), one)


def test_fade_gain_overlapping_fades_stay_below_both() -> None:
    g = fade_gain(0, 100, 100, 80, 80)
    assert float(g.max()) < 1.0 and np.all(g >= 0)
    assert np.all(g <= fade_gain(0, 100, 100, 80, 0) + 1e-7)
    assert np.all(g <= fade_gain(0, 100, 100, 0, 80) + 1e-7)
    assert np.all(fade_gain(100, 10, 100, 0, 0) == 0.0)  # past the end


def test_equal_power_crossfade() -> None:
    out, inn = equal_power_crossfade(4096)
    assert out.dtype == np.float32 and inn.shape == (4096,)
    assert np.max(np.abs(out.astype(np.float64) ** 2 + inn.astype(np.float64) ** 2 - 1.0)) < 1e-6
    assert np.all(np.diff(out) < 0) and np.all(np.diff(inn) > 0)


def test_gain_helpers() -> None:
    assert abs(db_to_gain(-6.0) - 0.501187) < 1e-6
    assert db_to_gain(-math.inf) == 0.0
    assert gain_to_db(0.0) == -math.inf
    assert abs(gain_to_db(db_to_gain(-17.5)) + 17.5) < 1e-12
    with pytest.raises(ValueError, match="-1"):
        gain_to_db(-1.0)
    mono = np.arange(5, dtype=np.float64)
    for x in (mono, mono[:, None]):
        st = mono_to_stereo(x)
        assert st.dtype == np.float32 and st.shape == (5, 2)
        assert np.array_equal(st[:, 0], st[:, 1])
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        mono_to_stereo(np.zeros((5, 3)))
