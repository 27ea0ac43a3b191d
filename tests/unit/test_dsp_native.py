"""The DSP kernels in C (native/dsp/msdsp.c, tools/build_dsp.py) give the numpy kernels' figures: the meter's
per-step powers, the true-peak envelope, the limiter's output; and a machine without them still measures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from mindscript import mp3frames
from mindscript.dsp import _native, limiter, loudness, truepeak

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import build_dsp  # noqa: E402

SR = 44100
T = TypeVar("T")


@pytest.fixture(scope="module", autouse=True)
def native_library() -> Iterator[None]:
    """The library `make setup` built (built here when missing and a compiler exists)."""
    if _native.lib is None:
        if os.environ.get("DSP_KERNELS", "native") == "numpy":
            pytest.skip("DSP_KERNELS=numpy")
        if shutil.which(os.environ.get("CC") or "cc") is None:
            pytest.skip("no C compiler: this machine runs the numpy kernels")
        ok, message = build_dsp.build(build_dsp.DEFAULT_OUT)
        assert ok, message
        _native.lib = _native._load()
    assert _native.lib is not None
    yield


def both(fn: Callable[[], T]) -> tuple[T, T]:
    """``fn()`` with the C kernels, then with the numpy kernels."""
    keep = _native.lib
    native = fn()
    _native.lib = None
    try:
        reference = fn()
    finally:
        _native.lib = keep
    return native, reference


def program(seconds: float, channels: int = 2, seed: int = 3) -> np.ndarray:
    """Tones, noise and loud bursts: some stretches need limiting, some do not."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = np.empty((len(t), channels), dtype=np.float32)
    for c in range(channels):
        burst = (np.sin(2 * np.pi * 0.5 * t + c) > 0.6) * 0.6
        x[:, c] = 0.25 * np.sin(2 * np.pi * (200 + 7 * c) * t) + rng.normal(0, 0.05, len(t)) * (0.3 + burst)
        x[:, c] += burst * np.sin(2 * np.pi * 3000 * t)
    return x


def metered(x: np.ndarray, sizes: list[int]) -> loudness.MeterState:
    state = loudness.meter_init(SR, x.shape[1])
    pos, i = 0, 0
    while pos < len(x):
        n = sizes[i % len(sizes)]
        state = loudness.meter_update(state, x[pos:pos + n])
        pos, i = pos + n, i + 1
    return state


@pytest.mark.parametrize("channels", [1, 2, 5])
@pytest.mark.parametrize("sizes", [[65536], [1, 4409, 4411, 100_003], [17]])
def test_meter_steps_match_the_numpy_meter(channels: int, sizes: list[int]) -> None:
    x = program(3.0 if sizes == [17] else 20.0, channels)
    native, reference = both(lambda: metered(x, sizes))
    assert native.steps_done == reference.steps_done
    np.testing.assert_allclose(loudness.meter_steps(native), loudness.meter_steps(reference), rtol=1e-11)
    np.testing.assert_allclose(native.pending, reference.pending, rtol=1e-11)
    np.testing.assert_allclose(native.zi, reference.zi, rtol=1e-9, atol=1e-15)
    a, b = loudness.meter_result(native), loudness.meter_result(reference)
    assert a.integrated_lufs == pytest.approx(b.integrated_lufs, abs=1e-9)
    assert a.lra_lu == pytest.approx(b.lra_lu, abs=1e-9)


def test_meter_reads_a_997_hz_sine_at_its_calibrated_loudness() -> None:
    """BS.1770-4's calibration: a 0 dBFS 997 Hz sine in one channel reads -3.01 LUFS (K-weighting's gain at
    997 Hz is ~0 dB), through the C kernel."""
    t = np.arange(10 * SR) / SR
    x = np.zeros((len(t), 2), dtype=np.float32)
    x[:, 0] = np.sin(2 * np.pi * 997 * t)
    assert loudness.meter_result(metered(x, [65536])).integrated_lufs == pytest.approx(-3.01, abs=0.01)


def test_true_peak_envelope_matches_the_fft_interpolator() -> None:
    x = program(5.0)
    env = lambda: truepeak.oversampled_peaks(truepeak.truepeak_init(2), x)[0]  # noqa: E731
    native, reference = both(env)
    np.testing.assert_allclose(native, reference, rtol=2e-6, atol=1e-7)
    # an inter-sample peak: a sine at fs/8 whose crests fall half-way between samples, 0.69 dB over them
    # (faded in and out over 0.1 s: a cut would ring in the interpolator)
    t = np.arange(SR)
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / (0.1 * SR))
    y = (0.5 * fade * np.cos(np.pi / 4 * t + np.pi / 8)).astype(np.float32)[:, None]
    assert 20 * np.log10(np.abs(y).max()) == pytest.approx(-6.02 - 0.69, abs=0.01)
    assert truepeak.true_peak_dbtp(y, SR) == pytest.approx(-6.02, abs=0.02)


@pytest.mark.parametrize("floor_db", [-12.0, -3.0, 0.0])
@pytest.mark.parametrize("channels", [1, 2, 10])  # 10: the C kernel interpolates 8 channels at a time
def test_true_peak_envelope_with_a_floor_matches_numpy_over_it(floor_db: float, channels: int) -> None:
    """With a floor (the limiter's ceiling) both skip windows that provably stay under it: every value over the
    floor is the same, and every skipped one is at most the floor."""
    x = program(8.0, channels) * np.float32(1.6)
    floor = 10 ** (floor_db / 20)
    # a second of fs/8 whose crests fall between samples: 5 % over the floor, its samples 0.69 dB lower, under it
    t = np.arange(SR)
    x[SR:2 * SR] = (1.05 * floor * np.cos(np.pi / 4 * t + np.pi / 8)).astype(np.float32)[:, None]

    def env() -> np.ndarray:
        state, parts = truepeak.truepeak_init(channels), []
        for i in range(0, len(x), 44_101):
            e, state = truepeak.oversampled_peaks(state, x[i:i + 44_101], floor=floor)
            parts.append(e)
        return np.concatenate(parts + [truepeak.truepeak_flush(state)[0]])

    native, reference = both(env)
    head, state = truepeak.oversampled_peaks(truepeak.truepeak_init(channels), x)  # no floor: every window
    exact = np.concatenate([head, truepeak.truepeak_flush(state)[0]])
    assert native.shape == reference.shape == (len(x),)
    over = reference > floor
    assert 100 < over.sum() < len(x)  # some windows over the floor, some skipped
    np.testing.assert_array_equal(native > floor, over)
    np.testing.assert_allclose(native[over], reference[over], rtol=2e-6)
    np.testing.assert_allclose(native[over], exact[over], rtol=2e-6)
    assert over[SR + 100:2 * SR - 100].sum() > SR // 8 and np.abs(x[SR:2 * SR]).max() < floor  # between samples
    assert np.all(native[~over] <= floor) and np.all(native <= exact * (1 + 2e-6))


@pytest.mark.parametrize("sizes", [[65536], [1000, 31, 70001]])
def test_streaming_true_peak_matches_numpy(sizes: list[int]) -> None:
    x = program(6.0)
    t = np.arange(SR)
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / (0.1 * SR))  # faded: a cut would ring in the interpolator
    x[SR:2 * SR, 1] = (1.9 * fade * np.cos(np.pi / 4 * t + np.pi / 8)).astype(np.float32)  # crests between samples

    def peak() -> float:
        state, pos, i = truepeak.truepeak_init(2), 0, 0
        while pos < len(x):
            state = truepeak.truepeak_update(state, x[pos:pos + sizes[i % len(sizes)]])
            pos, i = pos + sizes[i % len(sizes)], i + 1
        return truepeak.truepeak_db(state)

    native, reference = both(peak)
    assert native == pytest.approx(reference, abs=1e-5)
    assert native == pytest.approx(20 * np.log10(1.9), abs=0.01)  # 0.69 dB over the sample peak
    assert 20 * np.log10(np.abs(x).max()) < native - 0.5


@pytest.mark.parametrize("ceiling", [-6.0, -1.0, 6.0])
def test_limiter_output_matches_the_numpy_limiter(ceiling: float) -> None:
    x = program(12.0)
    params = limiter.LimiterParams(sample_rate=SR, ceiling_dbtp=ceiling)

    def run() -> np.ndarray:
        state, out = limiter.limiter_init(params, 2), []
        for i in range(0, len(x), 30_000):
            y, state = limiter.limiter_process(state, x[i:i + 30_000])
            out.append(y)
        out.append(limiter.limiter_flush(state)[0])
        return np.concatenate(out)

    native, reference = both(run)
    assert native.shape == reference.shape == x.shape
    np.testing.assert_allclose(native, reference, atol=2e-6)
    assert truepeak.true_peak_dbtp(native, SR) <= ceiling + 1e-3
    if ceiling > 0:  # never over the ceiling: passed through bit for bit
        assert np.array_equal(native, x)
    else:
        assert not np.array_equal(native, x)


@pytest.mark.parametrize("size", [0, 1, 1023, 1025, 70001, 1 << 20])
def test_crc16_matches_the_numpy_crc_and_continues(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    native, reference = both(lambda: mp3frames.crc16(data, 0x1234))
    assert native == reference
    cut = size // 3
    assert both(lambda: mp3frames.crc16(data[cut:], mp3frames.crc16(data[:cut])))[0] == mp3frames.crc16(data)


def _kernels_in_child(value: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DSP_KERNELS": value}
    return subprocess.run([sys.executable, "-c", "from mindscript.dsp import _native; print(_native.kernels())"],
                          env=env, capture_output=True, text=True, cwd=ROOT)


def test_dsp_kernels_setting_picks_the_kernels() -> None:
    assert _kernels_in_child("native").stdout.strip() == f"native: {_native.LIBRARY}"
    assert _kernels_in_child("numpy").stdout.strip() == "numpy"
    bad = _kernels_in_child("fortran")
    assert bad.returncode != 0 and "DSP_KERNELS must be 'native' or 'numpy', got 'fortran'" in bad.stderr


def test_build_without_a_compiler_says_so_and_setup_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    out = tmp_path / "lib" / "libmsdsp.so"
    assert build_dsp.main(["--out", str(out)]) == 0
    assert "no C compiler" in capsys.readouterr().err
    assert build_dsp.main(["--out", str(out), "--strict"]) == 1
    assert not out.exists()


def test_build_is_stamped_and_the_library_exports_the_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    monkeypatch.delenv("CC", raising=False)
    out = tmp_path / "libmsdsp.so"
    ok, message = build_dsp.build(out)
    assert ok and message.startswith(f"built {out}"), message
    assert build_dsp.build(out) == (True, f"{out} is up to date")
    assert build_lame_check(out) is None


def build_lame_check(path: Path) -> str | None:
    import build_lame

    return build_lame.check(path, build_dsp.REQUIRED)
