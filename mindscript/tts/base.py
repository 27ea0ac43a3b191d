"""The provider contract: a request in, encoded audio bytes out.

Providers deal in bytes only; ``mindscript.audio_io.decode_bytes`` turns a ``TTSAudio`` into samples.
Each provider translates its vendor's failures into ``mindscript.errors`` inside its own module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["AudioFormat", "TTSAudio", "TTSProvider", "TTSRequest"]


@dataclass(frozen=True)
class TTSRequest:
    """One synthesis call: a chunk of text (already within ``max_chars``) and how to voice it.

    ``previous_text``/``next_text`` are the neighbouring chunks, for providers that use them to keep
    prosody continuous across chunk boundaries.
    """

    text: str
    voice: str
    model: str | None = None
    speed: float = 1.0
    instructions: str | None = None
    previous_text: str | None = None
    next_text: str | None = None


@dataclass(frozen=True)
class TTSAudio:
    """Audio as the provider returned it.

    ``fmt`` is ``"wav"``, ``"mp3"`` or ``"pcm_s16le"`` (headerless mono 16-bit little-endian, for which
    ``sample_rate`` is the only description of the data).
    """

    data: bytes
    fmt: str
    sample_rate: int
    channels: int = 1


@dataclass(frozen=True)
class AudioFormat:
    """What a provider's bytes are: ``fmt`` as in ``TTSAudio``, at ``sample_rate`` with ``channels``."""

    fmt: str
    sample_rate: int
    channels: int = 1


class TTSProvider(Protocol):
    """What every TTS provider offers.

    ``audio_format`` is what ``synthesize`` returns (fixed per configured provider, so it can be part of a
    cache key before any request). ``key_params`` names everything else that shapes the audio beyond the
    request (the effective model, instructions, voice settings), for the content-hash cache key.
    """

    name: str
    audio_format: AudioFormat

    def key_params(self, request: TTSRequest) -> dict[str, object]:
        """Settings beyond ``request`` that change the returned audio (JSON-friendly)."""
        ...

    def max_chars(self, model: str | None) -> int:
        """The longest text (in characters) one request may carry for ``model``."""
        ...

    def synthesize(self, request: TTSRequest) -> TTSAudio:
        """Synthesize ``request.text``; raise ``mindscript.errors`` types on failure."""
        ...
