"""Content-addressed TTS audio: the cache key of one synthesis request, and the stores that hold its audio.

A chunk's key is a SHA-256 over everything that changes the audio a provider returns (provider, model, voice,
voice settings, speed, instructions, output format, the text and its neighbouring context text) plus a
format version, namespaced as ``tts-v1-<sha256>``. The same key always names the same audio, so a stored
object is never overwritten with something else and a second render of the same script bills nothing.

The stores keep the provider's bytes as returned (headerless PCM for the pcm formats), because the key
already pins the output format; ``ChunkRef`` carries how to decode them. No Prefect here: the Prefect side
builds the store (and hands in S3 credentials) and keeps its own cache records of the small ``ChunkRef``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from mindscript.errors import PermanentError, StorageError
from mindscript.tts.base import AudioFormat, TTSAudio, TTSProvider, TTSRequest

__all__ = [
    "CACHE_VERSION",
    "AudioStore",
    "ChunkRef",
    "LocalAudioStore",
    "MemoryAudioStore",
    "S3AudioStore",
    "cache_key",
    "fetch_or_synthesize",
]

log = logging.getLogger(__name__)

# Bump when the meaning of stored bytes changes (e.g. a provider adapter starts post-processing audio).
CACHE_VERSION = 1


@dataclass(frozen=True)
class ChunkRef:
    """A small, JSON-friendly reference to one chunk's audio in an ``AudioStore`` (never the audio itself)."""

    key: str
    fmt: str
    sample_rate: int
    channels: int
    characters: int
    size: int
    cached: bool  # True when the audio came from the store without a provider request

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_key(
    *,
    provider: str,
    model: str | None,
    voice: str,
    output_format: str,
    text: str,
    speed: float = 1.0,
    instructions: str | None = None,
    voice_settings: Mapping[str, Any] | None = None,
    previous_text: str | None = None,
    next_text: str | None = None,
    version: int = CACHE_VERSION,
) -> str:
    """``tts-v<version>-<sha256>`` of the canonical JSON of everything that shapes the returned audio."""
    payload = {
        "v": version,
        "provider": provider,
        "model": model,
        "voice": voice,
        "format": output_format,
        "speed": round(float(speed), 4),
        "instructions": instructions,
        "settings": dict(sorted((voice_settings or {}).items())),
        "text": text,
        "previous": previous_text,
        "next": next_text,
    }
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return f"tts-v{version}-{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"


class AudioStore(Protocol):
    """Where chunk audio lives, by cache key."""

    @property
    def identity(self) -> str:
        """A stable name of this store (goes into Prefect's cache key, so records never point elsewhere)."""
        ...

    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (atomically: a reader sees all of it or nothing)."""
        ...

    def size(self, key: str) -> int | None:
        """The stored object's size in bytes, or None when absent (cheaper than ``get``)."""
        ...


class MemoryAudioStore:
    """A dict (one process, one call): for the sequential path and tests."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    @property
    def identity(self) -> str:
        return f"memory:{id(self)}"

    def get(self, key: str) -> bytes | None:
        return self._data.get(key)

    def put(self, key: str, data: bytes) -> None:
        self._data[key] = bytes(data)

    def size(self, key: str) -> int | None:
        data = self._data.get(key)
        return None if data is None else len(data)


def _check_key(key: str) -> str:
    if not key.startswith("tts-v") or not all(c.isalnum() or c == "-" for c in key):
        raise ValueError(f"not a TTS cache key: {key!r}")
    return key


class LocalAudioStore:
    """A directory of ``<key[:2]>/<key>`` files (the default store; one worker or a shared volume)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    @property
    def identity(self) -> str:
        return f"file:{self.root.resolve()}"

    def path(self, key: str) -> Path:
        key = _check_key(key)
        return self.root / key[-64:-62] / key

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        dest = self.path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".part-", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, dest)  # atomic: a concurrent reader never sees half a file
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"TTS_CACHE_DIR: cannot write {dest}: {exc.strerror or exc}") from exc


class S3AudioStore:
    """Chunk audio in an S3 bucket, so every worker shares one cache.

    ``client`` is a boto3 S3 client built on the Prefect side (from a prefect-aws ``S3Bucket`` block's
    credentials); nothing here imports boto3 or reads credentials.
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "tts-cache") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @property
    def identity(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _error(self, op: str, key: str, code: str, exc: BaseException) -> StorageError:
        return StorageError(f"TTS cache bucket {self.bucket!r}: {op} {key!r} failed ({code or type(exc).__name__})")

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def get(self, key: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(response["Body"].read())
        except Exception as exc:  # botocore's ClientError, translated here
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._error("get", key, code, exc) from exc

    def size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._error("head", key, code, exc) from exc

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                   ContentType="application/octet-stream")
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            raise self._error("put", key, code, exc) from exc


def fetch_or_synthesize(store: AudioStore, key: str, provider: TTSProvider, request: TTSRequest,
                        expected: AudioFormat, *, gate: AbstractContextManager[object] | None = None) -> ChunkRef:
    """The chunk's audio from ``store`` if present; else one provider request, stored under ``key``.

    The provider is asked at most once per call; retrying is the caller's decision (a billed call). ``gate``
    (e.g. a semaphore) is held around the provider request only, so cache hits never wait for a slot.
    """
    data = store.get(key)
    if data is not None:
        return ChunkRef(key=key, fmt=expected.fmt, sample_rate=expected.sample_rate, channels=expected.channels,
                        characters=len(request.text), size=len(data), cached=True)
    with gate if gate is not None else nullcontext():
        audio: TTSAudio = provider.synthesize(request)
    if (audio.fmt, audio.sample_rate, audio.channels) != (expected.fmt, expected.sample_rate, expected.channels):
        # The key names the declared format; storing anything else under it would decode wrongly later.
        raise PermanentError(
            f"{provider.name} returned {audio.fmt}/{audio.sample_rate} Hz/{audio.channels} ch, "
            f"expected {expected.fmt}/{expected.sample_rate} Hz/{expected.channels} ch"
        )
    if not audio.data:
        raise PermanentError(f"{provider.name} returned no audio for a {len(request.text)}-character chunk")
    store.put(key, audio.data)
    return ChunkRef(key=key, fmt=audio.fmt, sample_rate=audio.sample_rate, channels=audio.channels,
                    characters=len(request.text), size=len(audio.data), cached=False)
