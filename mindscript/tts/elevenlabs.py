"""ElevenLabs text-to-speech through the ``elevenlabs`` SDK (``client.text_to_speech.convert``).

Wire format: ``POST {base_url}/v1/text-to-speech/{voice_id}?output_format=pcm_44100`` with the
``xi-api-key`` header and JSON ``{text, model_id, voice_settings, previous_text, next_text}``; the response
body is the audio (``pcm_<rate>`` is headerless mono s16le). Errors: ``{"detail": {"status", "message"}}``.

``previous_text``/``next_text`` (the neighbouring chunks) let the model keep prosody across chunk joins;
they are deterministic, so the request stays cacheable. The SDK's generic retry is switched off per request
(``max_retries=0``): the Prefect task owns retries. 429 ``too_many_concurrent_requests``/``system_busy`` and
5xx are transient; ``quota_exceeded``, 400/401/403/422 are not.
"""

from __future__ import annotations

import logging
from typing import Any

from mindscript.errors import (
    PermanentError,
    ProviderAuthFailed,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    RenderError,
)
from mindscript.redact import redact, scrub
from mindscript.tts.base import AudioFormat, TTSAudio, TTSRequest

__all__ = ["MODEL_CHAR_LIMITS", "ElevenLabsProvider"]

log = logging.getLogger(__name__)

# Characters per request by model (ElevenLabs' documented limits).
MODEL_CHAR_LIMITS: dict[str, int] = {
    "eleven_multilingual_v2": 10_000,
    "eleven_turbo_v2_5": 40_000,
    "eleven_flash_v2_5": 40_000,
    "eleven_turbo_v2": 30_000,
    "eleven_flash_v2": 30_000,
    "eleven_v3": 5_000,
}
DEFAULT_CHAR_LIMIT = 10_000
MIN_SPEED, MAX_SPEED = 0.7, 1.2  # the range voice_settings.speed accepts
_TRANSIENT_429 = frozenset({"too_many_concurrent_requests", "system_busy", "rate_limit_exceeded"})


class ElevenLabsProvider:
    """ElevenLabs voices by voice id; the SDK is imported on first use."""

    name = "elevenlabs"
    uses_context = True  # previous_text/next_text are sent, so they are part of the cache key

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str = "eleven_multilingual_v2",
        output_format: str = "pcm_44100",
        stability: float = 0.6,
        similarity: float = 0.75,
        timeout_s: float = 120.0,
    ) -> None:
        codec, _, rate = output_format.partition("_")
        if codec != "pcm" or not rate.isdigit():
            raise ValueError(f"output_format must be pcm_<rate>, got {output_format!r}")
        self._api_key = api_key  # kept out of repr, messages and logs
        self.base_url = base_url
        self.model = model
        self.output_format = output_format
        self.stability = stability
        self.similarity = similarity
        self.timeout_s = timeout_s
        self._sample_rate = int(rate)
        self._client: Any = None
        self._http: Any = None

    def __repr__(self) -> str:
        return f"ElevenLabsProvider(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def audio_format(self) -> AudioFormat:
        return AudioFormat("pcm_s16le", self._sample_rate, 1)

    def max_chars(self, model: str | None) -> int:
        return MODEL_CHAR_LIMITS.get(model or self.model, DEFAULT_CHAR_LIMIT)

    def voice_settings(self, request: TTSRequest) -> dict[str, float]:
        """The per-request voice settings (the job's speed clamped to what ElevenLabs accepts)."""
        speed = min(MAX_SPEED, max(MIN_SPEED, request.speed))
        return {"stability": self.stability, "similarity_boost": self.similarity, "speed": speed}

    def key_params(self, request: TTSRequest) -> dict[str, object]:
        return {"model": request.model or self.model, "output_format": self.output_format,
                "voice_settings": self.voice_settings(request)}

    def _get_client(self) -> Any:
        if self._client is None:
            import httpx
            from elevenlabs.client import ElevenLabs  # lazily: only this adapter needs the SDK

            # Our own httpx client, so close() can release its connections.
            self._http = httpx.Client(timeout=self.timeout_s)
            kwargs: dict[str, Any] = {"api_key": self._api_key, "timeout": self.timeout_s,
                                      "httpx_client": self._http}
            if self.base_url:
                kwargs["base_url"] = self.base_url.rstrip("/")
            self._client = ElevenLabs(**kwargs)
        return self._client

    def close(self) -> None:
        """Close the HTTP connection pool (a new one is made on the next request)."""
        http, self._http, self._client = self._http, None, None
        if http is not None:
            http.close()

    def synthesize(self, request: TTSRequest) -> TTSAudio:
        """One ``text_to_speech.convert`` call; vendor errors become ``mindscript.errors`` types."""
        model = request.model or self.model
        limit = self.max_chars(model)
        if len(request.text) > limit:
            raise ProviderRejected(f"text of {len(request.text)} chars exceeds {model}'s limit of {limit}")
        import httpx
        from elevenlabs import VoiceSettings
        from elevenlabs.core.api_error import ApiError

        kwargs: dict[str, Any] = {
            "text": request.text,
            "model_id": model,
            "output_format": self.output_format,
            "voice_settings": VoiceSettings(**self.voice_settings(request)),
            "request_options": {"max_retries": 0, "timeout_in_seconds": int(self.timeout_s)},
        }
        if request.previous_text:
            kwargs["previous_text"] = request.previous_text
        if request.next_text:
            kwargs["next_text"] = request.next_text
        try:
            data = b"".join(self._get_client().text_to_speech.convert(request.voice, **kwargs))
        except ApiError as exc:
            raise _translate(exc, model=model, voice=request.voice,
                             secret=self._api_key) from scrub(exc, [self._api_key])
        except httpx.TimeoutException as exc:
            raise ProviderError(f"ElevenLabs TTS timed out after {self.timeout_s:g} s (model {model!r})") from exc
        except httpx.TransportError as exc:
            raise ProviderError(f"ElevenLabs TTS unreachable at {self.base_url or 'the default API URL'!r}") from exc
        if len(data) % 2:
            raise ProviderError(f"ElevenLabs returned {len(data)} bytes of {self.output_format}: not whole samples")
        return TTSAudio(data=data, fmt="pcm_s16le", sample_rate=self._sample_rate, channels=1)


def _translate(exc: Any, *, model: str, voice: str, secret: str | None = None) -> RenderError:
    """Map an ``ApiError`` to the taxonomy; the message quotes the vendor's status and message only, with
    ``secret`` (the API key, which a proxy may echo) redacted."""
    status = int(getattr(exc, "status_code", 0) or 0)
    body = getattr(exc, "body", None)
    detail = body.get("detail") if isinstance(body, dict) else None
    vendor_status = str(detail.get("status", "")) if isinstance(detail, dict) else ""
    vendor_message = str(detail.get("message", "")) if isinstance(detail, dict) else ""
    if not vendor_message and isinstance(detail, list | str):
        vendor_message = str(detail)
    shown = redact(f"HTTP {status}" + (f" {vendor_status}" if vendor_status else "") + (
        f": {vendor_message[:300]}" if vendor_message else ""), [secret])
    where = f"ElevenLabs TTS (model {model!r}, voice {voice!r})"
    if vendor_status == "quota_exceeded":
        return ProviderRejected(f"{where}: quota exhausted, not retried ({shown})")
    if status == 429:
        if vendor_status and vendor_status not in _TRANSIENT_429:
            return ProviderRejected(f"{where}: {shown}")
        return ProviderRateLimited(f"{where}: rate limited ({shown})")
    if status in (401, 403):
        return ProviderAuthFailed(f"ELEVENLABS_API_KEY: rejected by ElevenLabs ({shown})")
    if status == 408 or status >= 500:
        return ProviderError(f"{where}: {shown}")
    if status in (400, 404, 422):
        return ProviderRejected(f"{where}: request rejected ({shown})")
    return PermanentError(f"{where}: {shown}")
