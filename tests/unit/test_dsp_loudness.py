"""Loudness against BS.1770-4 / EBU Tech 3341-3342 signals and against pyloudnorm."""

from __future__ import annotations

import math

import numpy as np
import pyloudnorm
import pytest

from mindscript.dsp.loudness import (
    integrated_loudness,
    k_weighting_sos,
    loudness_stats,
    meter_init,
    meter_result,
    meter_steps,
    meter_update,
)


def _sine(db: float, seconds: float, sr: int, hz: float = 1000.0, channels: int = 2) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    x = (10.0 ** (db / 20.0) * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1)


def test_k_weighting_matches_the_48k_tables() -> None:
    sos = k_weighting_sos(48000)
    # BS.1770-4 Table 1 (pre-filter) and Table 2 (RLB high-pass).
    assert np.allclose(sos[0], [1.53512485958697, -2.69169618940638, 1.19839281085285, 1.0,
                                -1.69065929318241, 0.73248077421585], atol=1e-8)  # fmt: skip
    assert np.allclose(sos[1], [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621], atol=1e-8)


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize("db", [-23.0, -33.0])
def test_ebu_3341_cases_1_2_stereo_sine(sr: int, db: float) -> None:
    # EBU Tech 3341 cases 1-2: 20 s of 1 kHz at -23 / -33 dBFS in both channels reads -23 / -33 LUFS.
    stats = loudness_stats(_sine(db, 20.0, sr), sr)
    assert abs(stats.integrated_lufs - db) < 0.1
    assert abs(stats.max_momentary_lufs - db) < 0.1 and abs(stats.max_short_term_lufs - db) < 0.1
    assert stats.lra_lu < 0.1


def test_single_channel_full_scale_sine_reads_minus_3() -> None:
    # BS.1770-4: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS.
    assert abs(integrated_loudness(_sine(0.0, 5.0, 48000, hz=997.0, channels=1), 48000) + 3.01) < 0.05


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize(
    ("levels", "durations"),
    [
        ((-36.0, -23.0, -36.0), (10.0, 60.0, 10.0)),  # EBU 3341 case 3
        ((-72.0, -36.0, -23.0, -36.0, -72.0), (10.0, 10.0, 60.0, 10.0, 10.0)),  # case 4
        ((-26.0, -20.0, -26.0), (20.0, 20.1, 20.0)),  # case 5
    ],
)
def test_ebu_3341_gated_sequences(sr: int, levels: tuple[float, ...], durations: tuple[float, ...]) -> None:
    x = np.concatenate([_sine(db, d, sr) for db, d in zip(levels, durations, strict=True)])
    assert abs(integrated_loudness(x, sr) + 23.0) < 0.1


def test_ebu_3342_case_1_loudness_range() -> None:
    sr = 48000
    x = np.concatenate([_sine(-20.0, 20.0, sr), _sine(-30.0, 20.0, sr)])
    assert abs(loudness_stats(x, sr).lra_lu - 10.0) < 1.0


def _realistic_mix(sr: int, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    x = np.zeros((n, 2))
    x += 0.05 * rng.standard_normal((n, 2))
    x[:, 0] += 0.2 * np.sin(2 * np.pi * 110 * t) * (1 + np.sin(2 * np.pi * 0.3 * t)) / 2
    x[:, 1] += 0.1 * np.sin(2 * np.pi * 2500 * t)
    bursts = (np.sin(2 * np.pi * 0.17 * t) > 0.6)[:, None]
    x += bursts * 0.3 * rng.standard_normal((n, 2))
    x[int(0.3 * n) : int(0.4 * n)] = 0.0  # a silence gap
    x[int(0.7 * n) : int(0.75 * n)] *= 0.01  # a near-silent passage
    return x.astype(np.float32)


@pytest.mark.parametrize(("sr", "seed"), [(44100, 1), (48000, 2), (22050, 3)])
def test_matches_pyloudnorm_on_realistic_mixes(sr: int, seed: int) -> None:
    x = _realistic_mix(sr, 40.0, seed)
    ours = integrated_loudness(x, sr)
    theirs = pyloudnorm.Meter(sr).integrated_loudness(x.astype(np.float64))
    assert abs(ours - theirs) < 0.1


@pytest.mark.parametrize(("sr", "seed"), [(44100, 7), (48000, 8)])
def test_streamed_meter_matches_pyloudnorm_within_0_05_lu(sr: int, seed: int) -> None:
    # The master and the stem analysis stream float32 blocks with the filter state carried between them.
    x = _realistic_mix(sr, 60.0, seed)
    state = meter_init(sr, 2)
    for i in range(0, x.shape[0], 65536):
        state = meter_update(state, x[i : i + 65536])
    theirs = pyloudnorm.Meter(sr).integrated_loudness(x.astype(np.float64))
    assert abs(meter_result(state).integrated_lufs - theirs) < 0.05


def test_channel_pairs_filter_exactly_like_single_channels() -> None:
    # Stereo is K-weighted as one complex signal; each channel must read exactly as it does alone.
    sr = 44100
    x = _realistic_mix(sr, 12.0, 9)
    both = meter_steps(meter_update(meter_init(sr, 2), x))
    for ch in range(2):
        alone = meter_steps(meter_update(meter_init(sr, 1), np.ascontiguousarray(x[:, ch : ch + 1])))
        assert np.array_equal(both[:, ch : ch + 1], alone)


def test_mono_with_weight_2_reads_as_the_same_signal_in_both_channels() -> None:
    sr = 44100
    mono = _realistic_mix(sr, 20.0, 10)[:, :1]
    stereo = np.repeat(mono, 2, axis=1)
    one = meter_update(meter_init(sr, 1, weights=(2.0,)), mono)
    two = meter_update(meter_init(sr, 2), stereo)
    assert meter_result(one) == meter_result(two)
    # BS.1770-4 eq. 2: the same signal in both channels reads +3.01 dB over one channel of weight 1.
    single = meter_result(meter_update(meter_init(sr, 1), mono)).integrated_lufs
    assert abs(meter_result(one).integrated_lufs - single - 10 * math.log10(2)) < 1e-9


def test_blocked_meter_equals_one_shot_exactly() -> None:
    sr = 44100
    x = _realistic_mix(sr, 20.0, 5)
    one = loudness_stats(x, sr)
    rng = np.random.default_rng(0)
    for sizes in ([1000], [4096], [65536], list(rng.integers(1, 30000, size=200))):
        state = meter_init(sr, 2)
        i = 0
        k = 0
        while i < x.shape[0]:
            size = int(sizes[k % len(sizes)])
            state = meter_update(state, x[i : i + size])
            i += size
            k += 1
        assert meter_result(state) == one


def test_non_decimal_rate_steps_are_exact() -> None:
    sr = 11025  # 100 ms is 1102.5 frames: steps alternate 1102 / 1103 frames
    x = _sine(-20.0, 10.0, sr, hz=500.0)
    one = meter_init(sr, 2)
    one = meter_update(one, x)
    assert meter_steps(one).shape == (100, 2)
    assert meter_result(one).integrated_lufs == integrated_loudness(x, sr)
    # BS.1770-4 defines K-weighting at 48 kHz. Re-derived for 11025 Hz (as libebur128 does), the bilinear
    # transform bends the 1.7 kHz shelf a little this close to Nyquist: ~0.13 dB more gain at 500 Hz.
    reference = integrated_loudness(_sine(-20.0, 10.0, 48000, hz=500.0), 48000)
    assert abs(meter_result(one).integrated_lufs - reference) < 0.2


def test_silence_and_short_input_are_minus_inf_not_nan() -> None:
    for x in (np.zeros((48000 * 5, 2), np.float32), np.zeros((100, 1), np.float32)):
        stats = loudness_stats(x, 48000)
        assert stats.integrated_lufs == -math.inf
        assert stats.max_momentary_lufs == -math.inf and stats.max_short_term_lufs == -math.inf
        assert stats.lra_lu == 0.0


def test_step_mask_measures_only_the_masked_part() -> None:
    sr = 48000
    speech = _sine(-20.0, 10.0, sr)
    bed = _sine(-40.0, 10.0, sr, hz=300.0)
    x = np.concatenate([speech, bed])
    state = meter_update(meter_init(sr, 2), x)
    n_steps = meter_steps(state).shape[0]
    mask = np.zeros(n_steps, dtype=bool)
    mask[:100] = True
    assert abs(meter_result(state, step_mask=mask).integrated_lufs + 20.0) < 0.1
    # Masking nothing in gives -inf; a short mask is padded with False.
    assert meter_result(state, step_mask=np.zeros(3, dtype=bool)).integrated_lufs == -math.inf


def test_rejects_bad_input_with_the_value() -> None:
    with pytest.raises(ValueError, match=r"\(10,\)"):
        loudness_stats(np.zeros(10, np.float32), 48000)
    with pytest.raises(ValueError, match="4000"):
        meter_init(4000, 2)
    with pytest.raises(ValueError, match=r"\(10, 3\)"):
        meter_update(meter_init(48000, 2), np.zeros((10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(1.0,\)"):
        meter_init(48000, 2, weights=(1.0,))
    with pytest.raises(ValueError, match="-1.0"):
        meter_init(48000, 1, weights=(-1.0,))


@pytest.mark.parametrize("dtype", [np.float64, np.complex64])
def test_the_filter_kernel_equals_scipy_signal_sosfilt(dtype: type) -> None:
    # The meter calls scipy's compiled kernel without importing scipy.signal; same numbers and state.
    from scipy import signal

    from mindscript.dsp import loudness

    assert loudness._SOS_KERNEL is not None  # this scipy's layout is the one the loader expects
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 20_000)).astype(dtype)
    zi = rng.standard_normal((2, 3, 2))
    sos = k_weighting_sos(44100)
    y, zf = loudness._sosfilt(sos, x, zi)
    want_y, want_zf = signal.sosfilt(sos, x, axis=-1, zi=zi)
    assert y.dtype == want_y.dtype and zf.shape == want_zf.shape == (2, 3, 2)
    assert np.array_equal(y, want_y) and np.array_equal(zf, want_zf)


def test_the_render_core_imports_no_scipy_signal_stack() -> None:
    # scipy.signal pulls in stats, optimize, sparse, spatial and special (~80 MB resident in every render
    # process); the render core needs none of them.
    import subprocess
    import sys

    code = ("import sys; import mindscript.master, mindscript.voice, mindscript.layers; "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in (['scipy', 'signal'], ['scipy', 'stats'], "
            "['scipy', 'special'], ['scipy', 'optimize'], ['scipy', 'sparse'], ['scipy', 'ndimage'], "
            "['scipy', 'fft'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['scipy.signal._sosfilt']"
