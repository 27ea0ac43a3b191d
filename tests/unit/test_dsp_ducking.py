"""Ducking: activity detection, curve shape and timing, per-sample interpolation."""

from __future__ import annotations

import numpy as np
import pytest

from mindscript.dsp.ducking import DuckParams, duck_curve, duck_gain_block, speech_activity
from mindscript.dsp.gain import db_to_gain

SR = 48000
HOP = 480  # 10 ms


def _voice() -> np.ndarray:
    """Speech-like noise: 2-4 s, 4.1-6 s (a 100 ms gap between words), 10-12 s; silence elsewhere (24 s)."""
    rng = np.random.default_rng(0)
    v = np.zeros((24 * SR, 1), np.float32)
    for a, b in ((2.0, 4.0), (4.1, 6.0), (10.0, 12.0)):
        lo, hi = round(a * SR), round(b * SR)
        v[lo:hi] = (rng.standard_normal((hi - lo, 1)) * 0.1).astype(np.float32)
    return v


def test_speech_activity_flags_and_blockwise() -> None:
    v = _voice()
    act = speech_activity(v, SR, HOP)
    assert act.dtype == np.bool_ and act.shape == (24 * SR // HOP,)
    assert act[200:400].all() and not act[:200].any() and not act[600:1000].any()
    blocked = np.concatenate(
        [speech_activity(v[i : i + 7 * HOP], SR, HOP) for i in range(0, v.shape[0], 7 * HOP)]
    )
    assert np.array_equal(blocked, act)
    assert speech_activity(v[: HOP + 5], SR, HOP).shape == (2,)  # a partial last hop gets a flag


def test_duck_curve_depth_release_and_monotone_ramps() -> None:
    params = DuckParams()
    curve = duck_curve(speech_activity(_voice(), SR, HOP), params, HOP / SR)
    floor = db_to_gain(-params.depth_db)
    assert curve.dtype == np.float32
    assert curve.min() >= floor - 1e-6 and curve.max() <= 1.0
    assert np.all(curve[:200] == 1.0)
    assert np.allclose(curve[300:400], floor, atol=0.01)  # fully ducked during speech
    assert np.allclose(curve[1180:1200], floor, atol=0.01)
    assert np.all(curve[410:415] < floor * 1.05)  # the 100 ms gap between words is held
    # Release is exponential with a 900 ms time constant: 3.5 s after the words, 8 dB * e^-3.9 = 0.16 dB.
    assert np.all(curve[950:1000] > db_to_gain(-0.2))
    assert np.all(curve[-100:] == 1.0)  # and exactly unity well after the release
    # Monotone ramps: down at the onset, up after the end.
    assert np.all(np.diff(curve[200:300]) <= 0) and np.all(np.diff(curve[600:900]) >= 0)
    # Attack faster than release: time to cover half the depth in dB.
    db = 20 * np.log10(curve.astype(np.float64))
    half = -params.depth_db / 2
    attack_hops = int(np.argmax(db[200:] <= half))
    release_hops = int(np.argmax(db[600:] >= half))
    assert 0 < attack_hops < release_hops


def test_duck_gain_block_interpolates_and_streams() -> None:
    curve = np.array([1.0, 0.5, 0.25], np.float32)
    g = duck_gain_block(curve, 100, 0, 400)
    assert g[0] == 1.0 and abs(g[50] - 0.75) < 1e-6 and g[100] == 0.5 and np.all(g[200:] == 0.25)
    full = duck_gain_block(curve, 100, 0, 1000)
    parts = np.concatenate([duck_gain_block(curve, 100, s, min(37, 1000 - s)) for s in range(0, 1000, 37)])
    assert np.array_equal(parts, full)
    assert np.all(duck_gain_block(np.zeros(0, np.float32), 100, 5, 10) == 1.0)


def test_validation() -> None:
    with pytest.raises(ValueError, match="-3"):
        DuckParams(depth_db=-3.0)
    with pytest.raises(ValueError, match="int64"):
        duck_curve(np.zeros(10, np.int64), DuckParams(), 0.01)
