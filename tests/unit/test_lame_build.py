"""LAME built for this machine (tools/build_lame.py): it is the one that runs, it sounds like the wheel's, and a
machine without it (no compiler, a bad LAME_LIBRARY) still encodes."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mindscript import lame
from mindscript.audio_io import open_encoder
from mindscript.dsp import loudness

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import build_lame  # noqa: E402

SR = 44100
WHEEL = importlib.util.find_spec("lameenc").origin  # type: ignore[union-attr]


@pytest.fixture
def fresh_choice(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """lame picks its library once per process: forget the choice before and after the test."""
    lame._chosen.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    lame._chosen.cache_clear()


def program(seconds: float) -> np.ndarray:
    """Stereo like a render's: binaural 200/207 Hz, 528 Hz in both ears, and a noise bed."""
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(7).normal(0, 0.05, (len(t), 2))
    left = 0.2 * np.sin(2 * np.pi * 200 * t) + 0.1 * np.sin(2 * np.pi * 528 * t)
    right = 0.2 * np.sin(2 * np.pi * 207 * t) + 0.1 * np.sin(2 * np.pi * 528 * t)
    return (np.stack([left, right], axis=1) + noise).astype(np.float32)


def encode(path: Path, x: np.ndarray) -> np.ndarray:
    assert lame.available()
    with open_encoder(path, fmt="mp3", sample_rate=SR, channels=2, bitrate_kbps=192) as enc:
        for i in range(0, len(x), 65536):
            enc.write(x[i:i + 65536])
    y, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == SR
    return y


def lufs(x: np.ndarray) -> float:
    return loudness.meter_result(loudness.meter_update(loudness.meter_init(SR, 2), x)).integrated_lufs


def peak_hz(x: np.ndarray, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    band = (freqs >= lo) & (freqs <= hi)
    return float(freqs[band][np.argmax(spectrum[band])])


def built_library() -> Path:
    """The library `make setup` built; built here when a compiler exists and it is missing."""
    if not build_lame.DEFAULT_OUT.exists():
        if shutil.which(os.environ.get("CC") or "cc") is None:
            pytest.skip("no C compiler: this machine encodes with the wheel's LAME")
        ok, message = build_lame.build(build_lame.DEFAULT_OUT)
        assert ok, message
    return build_lame.DEFAULT_OUT


def test_setup_builds_the_library_and_it_is_the_one_that_runs(fresh_choice: pytest.MonkeyPatch) -> None:
    path = built_library()
    assert build_lame.check(path) is None
    fresh_choice.delenv("LAME_LIBRARY", raising=False)
    assert lame.library() == f"built for this machine: {path}"
    # loading it leaves the process's floating point alone (no flush-to-zero from crtfastmath.o)
    tiny = np.array([1e-310, 5e-324]) * np.float64(1.0)
    assert np.all(tiny > 0) and np.float32(1e-40) * np.float32(1.0) > 0


def test_built_lame_sounds_like_the_wheels(tmp_path: Path, fresh_choice: pytest.MonkeyPatch) -> None:
    path = built_library()
    x = program(20.0)
    decoded = {}
    for name, lib in (("built", str(path)), ("wheel", WHEEL)):
        fresh_choice.setenv("LAME_LIBRARY", lib)
        lame._chosen.cache_clear()
        assert lame.library() == f"LAME_LIBRARY: {lib}"
        decoded[name] = encode(tmp_path / f"{name}.mp3", x)
    built, wheel = decoded["built"], decoded["wheel"]
    assert built.shape == wheel.shape == x.shape  # gapless header right: the input's length exactly
    assert lufs(built) == pytest.approx(lufs(wheel), abs=0.05)
    assert lufs(built) == pytest.approx(lufs(x), abs=0.5)  # LAME's low-pass takes some of the white noise
    # -ffast-math and the SSE paths round differently, so the bytes differ; what is heard must not: the two
    # decodes differ by far less than the coding noise each adds to the input.
    core = slice(SR, len(x) - SR)
    signal = float(np.mean(x[core] ** 2))
    between = float(np.mean((built[core] - wheel[core]) ** 2))
    coding = float(np.mean((wheel[core] - x[core]) ** 2))
    assert 10 * np.log10(signal / coding) > 15
    assert between < 2 * coding
    assert 10 * np.log10(signal / between) > 15
    for ear, carrier in ((0, 200.0), (1, 207.0)):
        assert peak_hz(built[core, ear], 190, 215) == pytest.approx(carrier, abs=0.1)
        assert peak_hz(built[core, ear], 500, 560) == pytest.approx(528.0, abs=0.1)


def test_unusable_lame_library_falls_back_with_a_warning(tmp_path: Path, fresh_choice: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    bogus = tmp_path / "libmp3lame.so"
    bogus.write_bytes(b"not a shared library")
    fresh_choice.setenv("LAME_LIBRARY", str(bogus))
    with caplog.at_level(logging.WARNING, logger="mindscript.lame"):
        chosen = lame.library()
    assert not chosen.startswith("LAME_LIBRARY")
    assert lame.available()
    assert f"LAME from LAME_LIBRARY ({bogus}) is not usable" in caplog.text
    y = encode(tmp_path / "fallback.mp3", program(3.0))
    assert y.shape == (3 * SR, 2)


def test_build_without_a_compiler_says_so_and_setup_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    out = tmp_path / "lib" / "libmp3lame.so"
    assert build_lame.main(["--out", str(out)]) == 0
    assert "no C compiler" in capsys.readouterr().err
    assert build_lame.main(["--out", str(out), "--strict"]) == 1
    assert not out.exists()


def test_build_rebuilds_when_the_flags_change(tmp_path: Path, fresh_choice: pytest.MonkeyPatch) -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    out = tmp_path / "libmp3lame.so"
    fresh_choice.delenv("CC", raising=False)
    fresh_choice.setenv("LAME_MARCH", "no-such-cpu")  # the compiler refuses it: built for its default CPU
    ok, message = build_lame.build(out)
    assert ok and message == f"built {out} (cc, -march=default)", message
    assert build_lame.check(out) is None
    assert build_lame.build(out) == (True, f"{out} is up to date")
    # for this CPU, with the release's scalar loops: the library setup builds (their AVX2 forms where the CPU
    # has AVX2: quantization, Huffman bit counting) must write the same bytes
    fresh_choice.setenv("LAME_MARCH", "native")
    ok, message = build_lame.build(out, defines=("MS_SCALAR",))
    assert ok and message.startswith("built"), message
    setup = built_library()
    headers = sorted(build_lame.SOURCE.rglob("*.h"))
    if setup.with_name(setup.name + ".build").read_text().strip() != build_lame.fingerprint(
            "cc", build_lame.flags("native"), [*build_lame.sources(), *headers]):
        pytest.skip("the library setup built has other flags (CC or LAME_MARCH set)")
    x = program(12.0)
    x[SR * 4:SR * 6] = np.clip(8 * x[SR * 4:SR * 6], -1, 1)  # clipped: large quantized values, the escape tables
    scalar = shutil.copy(out, tmp_path / "scalar.so")  # `out` itself is loaded already: its first build (check)
    encoded = {}
    for name, lib in (("scalar", scalar), ("setup", setup)):
        fresh_choice.setenv("LAME_LIBRARY", str(lib))
        lame._chosen.cache_clear()
        encode(tmp_path / f"{name}.mp3", x)
        encoded[name] = (tmp_path / f"{name}.mp3").read_bytes()
    assert len(encoded["setup"]) > 250_000 and encoded["setup"] == encoded["scalar"]
