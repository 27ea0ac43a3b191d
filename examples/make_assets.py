"""Generate the example background track deterministically (no binary files in the repository).

``python examples/make_assets.py`` writes examples/audio/ambient-pad.mp3 (a 40 s stereo pad: a slowly
breathing A-minor chord with soft filtered noise) unless it is already there. The benchmark reuses
``ambient_pad()`` and ``speech_like()`` for its inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import signal

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mindscript import audio_io  # noqa: E402

PAD_PATH = ROOT / "examples" / "audio" / "ambient-pad.mp3"


def ambient_pad(seconds: float, sample_rate: int = 44100, seed: int = 7) -> np.ndarray:
    """A calm stereo pad, float32 (frames, 2), peak about -6 dBFS."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    rng = np.random.default_rng(seed)
    chord = (110.0, 164.81, 220.0, 261.63, 329.63)
    out = np.zeros((n, 2))
    for i, f in enumerate(chord):
        breath = 0.6 + 0.4 * np.sin(2 * np.pi * (0.05 + 0.013 * i) * t + i)
        for ch, detune in enumerate((-0.15, 0.15)):
            out[:, ch] += breath * np.sin(2 * np.pi * (f + detune) * t + rng.uniform(0, 2 * np.pi)) / (1 + i)
    sos = signal.butter(2, [200, 1800], btype="bandpass", fs=sample_rate, output="sos")
    noise = signal.sosfilt(sos, rng.standard_normal((n, 2)), axis=0)
    out += 0.15 * noise
    out *= 0.5 / np.max(np.abs(out))
    return out.astype(np.float32)


def speech_like(seconds: float, sample_rate: int = 44100, seed: int = 3) -> np.ndarray:
    """A mono voice stand-in: voiced harmonics in syllables, words and phrase pauses; (frames, 1)."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    rng = np.random.default_rng(seed)
    f0 = 120 + 15 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 2
    phrases = (np.sin(2 * np.pi * 0.12 * t + rng.uniform(0, 6)) > -0.3).astype(float)
    sos = signal.butter(2, [150, 4000], btype="bandpass", fs=sample_rate, output="sos")
    x = signal.sosfilt(sos, voiced * syllables * phrases + 0.02 * rng.standard_normal(n))
    x *= 0.5 / np.max(np.abs(x))
    return x.astype(np.float32)[:, None]


def write_mp3(path: Path, samples: np.ndarray, sample_rate: int = 44100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with audio_io.open_encoder(path, fmt="mp3", sample_rate=sample_rate, channels=samples.shape[1],
                               bitrate_kbps=192) as enc:
        enc.write(samples)
    return path


def main() -> None:
    if not PAD_PATH.exists():
        write_mp3(PAD_PATH, ambient_pad(40.0))
        print(f"wrote {PAD_PATH.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
