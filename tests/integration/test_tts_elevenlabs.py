"""The ElevenLabs adapter through the real ``elevenlabs`` SDK against a local server speaking its wire format."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mindscript.errors import ProviderAuthFailed, ProviderError, ProviderRateLimited, ProviderRejected
from mindscript.tts.base import TTSRequest
from mindscript.tts.elevenlabs import ElevenLabsProvider
from tests.servers import elevenlabs_server as els

KEY = "xi-test-SECRET-elevenlabs-42"
VOICE = els.VOICE_ID


_OPEN: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


@pytest.fixture
def server() -> Iterator[els.ElevenLabsServer]:
    with els.ElevenLabsServer(api_key=KEY) as srv:
        yield srv  # type: ignore[misc]


def provider(server: els.ElevenLabsServer, **kw: object) -> ElevenLabsProvider:
    made = ElevenLabsProvider(api_key=kw.pop("api_key", KEY), base_url=server.base_url, **kw)  # type: ignore[arg-type]
    _OPEN.append(made)
    return made


def test_request_path_headers_body_and_audio(server: els.ElevenLabsServer) -> None:
    tts = provider(server)
    audio = tts.synthesize(TTSRequest(text="Let your shoulders drop.", voice=VOICE, speed=0.5,
                                      previous_text="Breathe in.", next_text="Breathe out."))
    [req] = server.tts_requests()
    assert req.path == f"/v1/text-to-speech/{VOICE}" and req.query["output_format"] == "pcm_44100"
    assert req.headers["xi-api-key"] == KEY
    body = req.body
    assert body["text"] == "Let your shoulders drop." and body["model_id"] == "eleven_multilingual_v2"
    assert body["previous_text"] == "Breathe in." and body["next_text"] == "Breathe out."
    # the job's 0.5 is clamped into the 0.7-1.2 range ElevenLabs accepts
    assert body["voice_settings"] == {"stability": 0.6, "similarity_boost": 0.75, "speed": 0.7}
    assert (audio.fmt, audio.sample_rate) == ("pcm_s16le", 44100)
    assert audio.data == els.speech_like_pcm(f"{VOICE}|Let your shoulders drop.", 44100, 0.01 / 0.7)


@pytest.mark.parametrize(("model", "limit"), [("eleven_multilingual_v2", 10_000), ("eleven_turbo_v2_5", 40_000),
                                              ("eleven_flash_v2_5", 40_000), ("eleven_v3", 5_000)])
def test_model_limits(server: els.ElevenLabsServer, model: str, limit: int) -> None:
    server.seconds_per_char = 0.0002  # keep the 40,000-character answers short
    tts = provider(server, model=model)
    assert tts.max_chars(None) == limit
    with pytest.raises(ProviderRejected, match=str(limit)):
        tts.synthesize(TTSRequest(text="a" * (limit + 1), voice=VOICE))
    assert server.tts_requests() == []
    tts.synthesize(TTSRequest(text="word " * (limit // 5), voice=VOICE))
    assert server.tts_requests()[0].body["model_id"] == model


def test_other_output_format(server: els.ElevenLabsServer) -> None:
    audio = provider(server, output_format="pcm_24000").synthesize(TTSRequest(text="Rest.", voice=VOICE))
    assert audio.sample_rate == 24000 and server.tts_requests()[0].query["output_format"] == "pcm_24000"


@pytest.mark.parametrize(
    ("reply", "error"),
    [(els.SERVER_ERROR, ProviderError), (els.UNAVAILABLE, ProviderError), (els.BUSY, ProviderRateLimited),
     (els.CONCURRENT, ProviderRateLimited), (els.QUOTA, ProviderRejected), (els.UNAUTHORIZED, ProviderAuthFailed)],
)
def test_errors_translate_and_the_sdk_does_not_retry(server: els.ElevenLabsServer, reply: els.Reply,
                                                      error: type[Exception]) -> None:
    server.fail_always = reply
    with pytest.raises(error) as info:
        provider(server).synthesize(TTSRequest(text="Hello.", voice=VOICE))
    assert len(server.tts_requests()) == 1
    assert KEY not in str(info.value)


def test_unknown_voice_is_rejected(server: els.ElevenLabsServer) -> None:
    with pytest.raises(ProviderRejected, match="voice_not_found"):
        provider(server).synthesize(TTSRequest(text="Hello.", voice="NoSuchVoice"))
