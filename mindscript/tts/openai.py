"""OpenAI text-to-speech through the ``openai`` SDK (``client.audio.speech.create``).

Wire format (``POST {base_url}/audio/speech``, ``Authorization: Bearer <key>``): JSON
``{model, input, voice, instructions?, response_format, speed}``; the body of the response is the audio
(``pcm`` is headerless 24 kHz mono s16le). Errors come back as ``{"error": {"message", "type", "code"}}``.

Retries are owned by the caller (the Prefect chunk task), so the client is built with ``max_retries=0``:
otherwise the SDK's own two retries of 408/409/429/5xx would multiply with the task's (3 x 3 calls).
A 429 whose code is ``insufficient_quota`` is permanent (retrying cannot add credit); other 429s, 408, 409,
5xx, timeouts and connection failures are transient.
"""

from __future__ import annotations

import logging
from typing import Any

from mindscript.errors import (
    InvalidJob,
    PermanentError,
    ProviderAuthFailed,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    RenderError,
)
from mindscript.redact import redact, scrub
from mindscript.tts.base import AudioFormat, TTSAudio, TTSRequest

__all__ = ["MAX_INPUT_CHARS", "OpenAIProvider"]

log = logging.getLogger(__name__)

MAX_INPUT_CHARS = 4096  # the speech endpoint's documented limit on `input`, for every model
MODELS_WITHOUT_INSTRUCTIONS = frozenset({"tts-1", "tts-1-hd"})
_PCM_RATE = 24000
_MIN_SPEED, _MAX_SPEED = 0.25, 4.0


class OpenAIProvider:
    """OpenAI voices (``alloy``, ``nova``, ``shimmer``, ...) by model; the SDK is imported on first use."""

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str = "gpt-4o-mini-tts",
        instructions: str | None = None,
        response_format: str = "pcm",
        timeout_s: float = 120.0,
    ) -> None:
        if response_format not in ("pcm", "wav"):
            raise ValueError(f"response_format must be 'pcm' or 'wav', got {response_format!r}")
        self._api_key = api_key  # kept out of repr, messages and logs
        self.base_url = base_url
        self.model = model
        self.instructions = instructions
        self.response_format = response_format
        self.timeout_s = timeout_s
        self._client: Any = None

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def audio_format(self) -> AudioFormat:
        return AudioFormat("pcm_s16le" if self.response_format == "pcm" else "wav", _PCM_RATE, 1)

    def max_chars(self, model: str | None) -> int:
        return MAX_INPUT_CHARS

    def _model(self, request: TTSRequest) -> str:
        return request.model or self.model

    def _instructions(self, request: TTSRequest) -> str | None:
        if self._model(request) in MODELS_WITHOUT_INSTRUCTIONS:
            return None  # tts-1 and tts-1-hd reject or ignore instructions
        return request.instructions or self.instructions or None

    def key_params(self, request: TTSRequest) -> dict[str, object]:
        return {"model": self._model(request), "instructions": self._instructions(request),
                "response_format": self.response_format}

    def _get_client(self) -> Any:
        if self._client is None:
            import openai  # lazily: only this adapter needs the SDK

            self._client = openai.OpenAI(api_key=self._api_key, base_url=self.base_url, max_retries=0,
                                         timeout=self.timeout_s)
        return self._client

    def close(self) -> None:
        """Close the SDK client's connection pool (a new one is made on the next request)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def synthesize(self, request: TTSRequest) -> TTSAudio:
        """One ``audio.speech.create`` call; vendor errors become ``mindscript.errors`` types."""
        if len(request.text) > MAX_INPUT_CHARS:
            raise ProviderRejected(f"text of {len(request.text)} chars exceeds OpenAI's limit of {MAX_INPUT_CHARS}")
        if not _MIN_SPEED <= request.speed <= _MAX_SPEED:
            raise InvalidJob(f"payload.projectData.layers.voice.speed: OpenAI accepts 0.25-4 (got {request.speed!r})")
        import openai

        model = self._model(request)
        kwargs: dict[str, Any] = {"model": model, "voice": request.voice, "input": request.text,
                                  "response_format": self.response_format, "speed": request.speed}
        instructions = self._instructions(request)
        if instructions:
            kwargs["instructions"] = instructions
        try:
            response = self._get_client().audio.speech.create(**kwargs)
            data = response.read()
        except openai.APIStatusError as exc:
            raise _translate_status(exc, model=model, voice=request.voice,
                                    secret=self._api_key) from scrub(exc, [self._api_key])
        except openai.APITimeoutError as exc:
            raise ProviderError(f"OpenAI TTS timed out after {self.timeout_s:g} s (model {model!r})") from exc
        except openai.APIConnectionError as exc:
            raise ProviderError(f"OpenAI TTS unreachable at {self.base_url or 'the default API URL'!r}") from exc
        except openai.OpenAIError as exc:
            raise ProviderError(f"OpenAI TTS failed: {type(exc).__name__}") from exc
        fmt = self.audio_format
        return TTSAudio(data=data, fmt=fmt.fmt, sample_rate=fmt.sample_rate, channels=1)


def _translate_status(exc: Any, *, model: str, voice: str, secret: str | None = None) -> RenderError:
    """Map an ``APIStatusError`` to the taxonomy; the message quotes the vendor's own message, with ``secret``
    (the API key, which OpenAI's 401 and proxies echo) redacted."""
    status = int(getattr(exc, "status_code", 0) or 0)
    code = getattr(exc, "code", None)
    body = getattr(exc, "body", None)
    vendor = body.get("message") if isinstance(body, dict) else None
    detail = redact(f"HTTP {status}" + (f" {code}" if code else "") + (f": {str(vendor)[:300]}" if vendor else ""),
                    [secret])
    where = f"OpenAI TTS (model {model!r}, voice {voice!r})"
    if status == 429 and code == "insufficient_quota":
        return ProviderRejected(f"{where}: quota exhausted, not retried ({detail})")
    if status == 429:
        return ProviderRateLimited(f"{where}: rate limited ({detail})")
    if status in (401, 403):
        return ProviderAuthFailed(f"OPENAI_API_KEY: rejected by OpenAI ({detail})")
    if status in (408, 409) or status >= 500:
        return ProviderError(f"{where}: {detail}")
    if status in (400, 404, 422):
        return ProviderRejected(f"{where}: request rejected ({detail})")
    return PermanentError(f"{where}: {detail}")
