"""Independent measurements for tests: decode with soundfile, loudness by pyloudnorm, true peak by scipy.

Deliberately not the project's own meter, so a bug there cannot hide a bad delivered file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import soundfile as sf
from scipy import signal


def decode(path: str | Path) -> tuple[np.ndarray, int]:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data, rate


def lufs(samples: np.ndarray, rate: int) -> float:
    return float(pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64)))


def true_peak_dbtp(samples: np.ndarray) -> float:
    """4x oversampled peak (polyphase FIR, scipy's default Kaiser design)."""
    up = signal.resample_poly(samples.astype(np.float64), 4, 1, axis=0)
    return float(20 * np.log10(np.max(np.abs(up))))


def peak_frequency(x: np.ndarray, rate: int, near: float, span: float = 5.0) -> float:
    """Frequency of the strongest component within ``near +- span`` Hz, to well under 1 mHz.

    The signal is shifted down by ``near`` (complex demodulation) and averaged over 10 ms boxes, which
    keeps only components within ~50 Hz of ``near`` at a 100 Hz rate; a Hann-windowed DTFT of that short
    signal is then maximized by golden-section search around its coarse FFT peak.
    """
    box = rate // 100
    n = (len(x) // box) * box
    t = np.arange(n) / rate
    base = (x[:n].astype(np.float64) * np.exp(-2j * np.pi * near * t)).reshape(-1, box).mean(axis=1)
    m = len(base)
    tb = (np.arange(m) * box + (box - 1) / 2) / rate
    w = base * np.hanning(m)
    nfft = 1 << int(np.ceil(np.log2(m * 8)))
    spec = np.abs(np.fft.fft(w, nfft))
    offsets = np.fft.fftfreq(nfft, box / rate)
    band = np.abs(offsets) <= span
    coarse = offsets[band][np.argmax(spec[band])]

    def mag(f: float) -> float:
        return -abs(np.dot(w, np.exp(-2j * np.pi * f * tb)))

    lo, hi = coarse - rate / box / nfft, coarse + rate / box / nfft
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(50):
        if mag(a) < mag(b):
            hi, b = b, a
            a = hi - g * (hi - lo)
        else:
            lo, a = a, b
            b = lo + g * (hi - lo)
    return near + (lo + hi) / 2
