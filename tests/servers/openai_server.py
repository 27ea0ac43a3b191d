"""A local server speaking OpenAI's speech API wire format (``POST /v1/audio/speech``).

Checks what the real endpoint documents: ``Authorization: Bearer <key>``, a JSON body with ``model``,
``input`` (at most 4096 characters), ``voice``, optional ``instructions`` (not for tts-1/tts-1-hd),
``response_format`` and ``speed`` (0.25-4). Answers ``pcm`` as headerless 24 kHz mono s16le and ``wav`` as a
RIFF file; errors as ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import io
import wave

from tests.servers._http import Recorded, Reply, VendorServer, speech_like_pcm

MODELS = {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15"}
VOICES = {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse"}
RATE = 24000


def error(status: int, message: str, type_: str, code: str | None) -> Reply:
    return Reply.json(status, {"error": {"message": message, "type": type_, "param": None, "code": code}})


SERVER_ERROR = error(500, "The server had an error while processing your request.", "server_error", None)
UNAVAILABLE = error(503, "The engine is currently overloaded, please try again later.", "server_error", None)
RATE_LIMITED = error(429, "Rate limit reached for requests.", "requests", "rate_limit_exceeded")
QUOTA = error(429, "You exceeded your current quota, please check your plan and billing details.",
              "insufficient_quota", "insufficient_quota")
BAD_REQUEST = error(400, "Invalid value for 'voice'.", "invalid_request_error", "invalid_value")


class OpenAIServer(VendorServer):
    def __init__(self, api_key: str = "sk-test-openai", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.api_key = api_key

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def speech_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/audio/speech"]

    def chunk_of(self, req: Recorded) -> tuple[str, str, str] | None:
        body = req.body if isinstance(req.body, dict) else {}
        if req.path != "/v1/audio/speech" or not isinstance(body.get("input"), str):
            return None
        return str(body.get("voice")), body["input"], ""

    def handle(self, req: Recorded) -> Reply:
        if req.path != "/v1/audio/speech" or req.method != "POST":
            return error(404, f"Invalid URL ({req.method} {req.path})", "invalid_request_error", None)
        if req.headers.get("authorization") != f"Bearer {self.api_key}":
            return error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        body = req.body if isinstance(req.body, dict) else {}
        model, text, voice = body.get("model"), body.get("input"), body.get("voice")
        fmt, speed = body.get("response_format", "mp3"), body.get("speed", 1.0)
        if model not in MODELS:
            return error(400, f"Invalid model {model!r}.", "invalid_request_error", "model_not_found")
        if not isinstance(text, str) or not text:
            return error(400, "'input' is required.", "invalid_request_error", None)
        if len(text) > 4096:
            return error(400, f"'input' is too long: {len(text)} > 4096 characters.", "invalid_request_error",
                         "string_above_max_length")
        if voice not in VOICES:
            return BAD_REQUEST
        if "instructions" in body and model in ("tts-1", "tts-1-hd"):
            return error(400, "instructions are not supported for this model.", "invalid_request_error", None)
        if not 0.25 <= float(speed) <= 4.0:
            return error(400, "speed must be between 0.25 and 4.0", "invalid_request_error", None)
        pcm = speech_like_pcm(f"{voice}|{text}", RATE, self.seconds_per_char / float(speed))
        if fmt == "pcm":
            return Reply(200, pcm, "audio/pcm")
        if fmt == "wav":
            buf = io.BytesIO()
            with wave.open(buf, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(RATE)
                w.writeframes(pcm)
            return Reply(200, buf.getvalue(), "audio/wav")
        return error(400, f"this test server serves pcm and wav, not {fmt!r}", "invalid_request_error", None)


if __name__ == "__main__":  # python -m tests.servers.openai_server KEY DELAY SECONDS_PER_CHAR
    import sys

    key, delay, spc = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    with OpenAIServer(api_key=key, delay_s=delay, seconds_per_char=spc) as srv:
        print(srv.base_url, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin
