"""A deterministic TTS test double (provider name ``"fake"``), shipped with the library.

It makes a speech-like signal instead of speech: a harmonic voice at a pitch picked from the text's
hash, shaped into syllables at about 4 per second, with short silences between words. Its length grows
with the text (about 14 characters per second at speed 1), so loudness, ducking and timing code see
realistic material. The same request always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import numpy as np

from mindscript.errors import ProviderRejected, RenderError
from mindscript.tts.base import AudioFormat, TTSAudio, TTSRequest

__all__ = ["FakeProvider"]


class FakeProvider:
    """Deterministic stand-in for a real provider; records every request in ``calls``.

    ``failures`` are raised, in order, by the first ``len(failures)`` calls (each still recorded), so
    tests can exercise retries and error mapping without a network.
    """

    name = "fake"

    def __init__(
        self,
        *,
        sample_rate: int = 24000,
        chars_per_second: float = 14.0,
        max_chars_limit: int = 4096,
        failures: Sequence[RenderError] = (),
    ) -> None:
        self.sample_rate = sample_rate
        self.chars_per_second = chars_per_second
        self.max_chars_limit = max_chars_limit
        self.calls: list[TTSRequest] = []
        self._failures = list(failures)
        self._lock = threading.Lock()

    @property
    def audio_format(self) -> AudioFormat:
        return AudioFormat("pcm_s16le", self.sample_rate, 1)

    def key_params(self, request: TTSRequest) -> dict[str, object]:
        """Only the signal's pacing shapes the fake audio beyond the request."""
        return {"chars_per_second": self.chars_per_second}

    def max_chars(self, model: str | None) -> int:
        """The configured per-request character limit (any model)."""
        return self.max_chars_limit

    def synthesize(self, request: TTSRequest) -> TTSAudio:
        """Return mono ``pcm_s16le`` at ``sample_rate``; raises the next queued failure if any."""
        with self._lock:
            self.calls.append(request)
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            raise failure
        if len(request.text) > self.max_chars_limit:
            raise ProviderRejected(
                f"text of {len(request.text)} chars exceeds the fake provider's limit "
                f"of {self.max_chars_limit}"
            )
        samples = _speech_like(request.text, request.voice, request.speed, self.sample_rate,
                               self.chars_per_second)  # fmt: skip
        pcm = np.clip(np.rint(samples * 32767.0), -32768, 32767).astype("<i2")
        return TTSAudio(data=pcm.tobytes(), fmt="pcm_s16le", sample_rate=self.sample_rate, channels=1)


def _speech_like(
    text: str, voice: str, speed: float, sample_rate: int, chars_per_second: float
) -> np.ndarray:
    """A mono float64 signal in [-0.5, 0.5] whose length and pitch follow from the request."""
    digest = hashlib.sha256(f"{voice}\x00{text}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    seconds = max(0.25, len(text.strip()) / (chars_per_second * max(speed, 0.1)))
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate

    # Voice: a male-to-female range of fundamentals with a slow intonation drift, five harmonics
    # falling off at about 6 dB per octave like a glottal source.
    f0 = 100.0 + 120.0 * digest[8] / 255.0
    pitch = f0 * (1.0 + 0.06 * np.sin(2 * np.pi * 0.7 * t + digest[9]))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice_sig = sum(np.sin(k * phase) / k for k in range(1, 6))

    # Syllables: raised-cosine bumps at ~4 Hz; words: a silence gap at every word boundary, placed
    # proportionally to where the space falls in the text.
    syllable_rate = 4.0 * max(speed, 0.1)
    envelope = np.sin(np.pi * ((t * syllable_rate) % 1.0)) ** 2
    words = text.split()
    if len(words) > 1:
        gap = round(0.08 * sample_rate)
        total = sum(map(len, words))
        cursor = 0
        for word in words[:-1]:
            cursor += len(word)
            start = round(cursor / total * n)
            envelope[start : start + gap] = 0.0
    jitter = 0.85 + 0.15 * rng.random(n // max(1, sample_rate // 20) + 1)  # per-50 ms level variation
    envelope *= np.repeat(jitter, max(1, sample_rate // 20))[:n]
    signal = voice_sig * envelope
    peak = float(np.max(np.abs(signal))) if n else 0.0
    return signal * (0.5 / peak) if peak > 0 else signal
