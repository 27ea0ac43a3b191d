"""A local server speaking ElevenLabs' text-to-speech wire format.

``POST /v1/text-to-speech/{voice_id}?output_format=pcm_44100`` with the ``xi-api-key`` header and JSON
``{text, model_id, voice_settings, previous_text, next_text}``; answers headerless mono s16le PCM at the
requested rate; errors as ``{"detail": {"status", "message"}}``. Per-model character limits are enforced.
"""

from __future__ import annotations

import re

from tests.servers._http import Recorded, Reply, VendorServer, speech_like_pcm

LIMITS = {"eleven_multilingual_v2": 10_000, "eleven_turbo_v2_5": 40_000, "eleven_flash_v2_5": 40_000,
          "eleven_v3": 5_000}
VOICE_ID = "21m00Tcm4TlvDq8ikWAM"
_PATH = re.compile(r"^/v1/text-to-speech/(?P<voice>[A-Za-z0-9]+)$")


def error(status: int, vendor_status: str, message: str) -> Reply:
    return Reply.json(status, {"detail": {"status": vendor_status, "message": message}})


SERVER_ERROR = error(500, "internal_error", "An internal error occurred.")
UNAVAILABLE = error(503, "service_unavailable", "Service temporarily unavailable.")
BUSY = error(429, "system_busy", "Our services are experiencing high traffic, please try again.")
CONCURRENT = error(429, "too_many_concurrent_requests", "Too many concurrent requests for your subscription.")
QUOTA = error(401, "quota_exceeded", "This request exceeds your quota. You have 0 credits remaining.")
UNAUTHORIZED = error(401, "invalid_api_key", "Invalid API key")


class ElevenLabsServer(VendorServer):
    def __init__(self, api_key: str = "xi-test-elevenlabs", voices: tuple[str, ...] = (VOICE_ID,),
                 **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.api_key = api_key
        self.voices = set(voices)

    @property
    def base_url(self) -> str:
        return self.origin

    def tts_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith("/v1/text-to-speech/")]

    def chunk_of(self, req: Recorded) -> tuple[str, str, str] | None:
        match = _PATH.match(req.path)
        body = req.body if isinstance(req.body, dict) else {}
        if match is None or not isinstance(body.get("text"), str):
            return None
        # the neighbouring text conditions the audio: one text between other neighbours is another chunk
        return match["voice"], body["text"], f"{body.get('previous_text') or ''}|{body.get('next_text') or ''}"

    def handle(self, req: Recorded) -> Reply:
        match = _PATH.match(req.path)
        if req.method != "POST" or match is None:
            return error(404, "not_found", f"no route {req.method} {req.path}")
        if req.headers.get("xi-api-key") != self.api_key:
            return UNAUTHORIZED
        if match["voice"] not in self.voices:
            return error(404, "voice_not_found", f"A voice with voice_id {match['voice']} was not found.")
        fmt = req.query.get("output_format", "mp3_44100_128")
        rate_match = re.fullmatch(r"pcm_(\d+)", fmt)
        if rate_match is None:
            return error(422, "invalid_output_format", f"this test server serves pcm_*, not {fmt!r}")
        body = req.body if isinstance(req.body, dict) else {}
        text, model = body.get("text"), body.get("model_id", "eleven_multilingual_v2")
        if model not in LIMITS:
            return error(400, "model_not_found", f"model {model!r} not found")
        if not isinstance(text, str) or not text:
            return error(422, "invalid_text", "text is required")
        if len(text) > LIMITS[model]:
            return error(400, "max_character_limit_exceeded",
                         f"Text is {len(text)} characters, over the {LIMITS[model]} limit of {model}.")
        speed = float((body.get("voice_settings") or {}).get("speed", 1.0))
        if not 0.7 <= speed <= 1.2:
            return error(400, "invalid_voice_settings", "speed must be between 0.7 and 1.2")
        pcm = speech_like_pcm(f"{match['voice']}|{text}", int(rate_match[1]), self.seconds_per_char / speed)
        return Reply(200, pcm, "application/octet-stream")
