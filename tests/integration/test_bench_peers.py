"""The benchmark's peer pipelines render the benchmark's program (bench/peers.py), so comparing against them is
fair: right length, stereo, the binaural sines in their own ears, the Solfeggio tone in both, normalized
towards the target; and the ebur128 reading the comparison reports agrees with an independent meter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import inputs as bench_inputs
from bench import peers
from bench._harness import ebur128
from tests.measure import decode, lufs

DURATION_S = 30.0


def _magnitudes(x: np.ndarray, rate: int, hz: float) -> np.ndarray:
    """Spectral magnitude of each channel at ``hz`` (Hann window, bin nearest to ``hz``)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))[:, None], axis=0))
    return spec[int(round(hz * len(x) / rate))]


@pytest.mark.parametrize("system", ["ffmpeg", "pydub", "floor"])
def test_peer_renders_the_benchmark_program(system: str, tmp_path: Path) -> None:
    inp = bench_inputs.ensure(DURATION_S)
    out = tmp_path / f"{system}.mp3"
    result = peers.PIPELINES[system](inp, DURATION_S, out)
    assert result["output"] == str(out) and result["wall_s"] > 0

    x, rate = decode(out)
    assert rate == 44100 and x.shape[1] == 2
    assert abs(len(x) / rate - DURATION_S) < 0.05, len(x) / rate
    # the lead-in (2-8 s) holds music and tones but no voice; 4 s windows give 0.25 Hz bins
    lead = x[2 * rate:6 * rate].astype(np.float64)
    left200, right200 = _magnitudes(lead, rate, 200.0)
    left207, right207 = _magnitudes(lead, rate, 207.0)
    assert left200 > 10 * left207 and right207 > 10 * right200  # binaural: 200 Hz left, 207 Hz right
    sol = _magnitudes(lead, rate, 528.0)
    off = _magnitudes(lead, rate, 520.0)
    assert np.all(sol > 10 * off)  # Solfeggio in both ears

    # the mix measures about -25 LUFS before normalization; every peer moves it to near the target
    # (ffmpeg's loudnorm falls back to dynamic mode on this material and lands a few LU short)
    measured = lufs(x, rate)
    assert -20.0 < measured < -15.0, measured
    integrated, _ = ebur128(out)
    assert abs(integrated - measured) < 0.3, (integrated, measured)
