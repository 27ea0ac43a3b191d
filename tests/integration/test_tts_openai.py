"""The OpenAI adapter through the real ``openai`` SDK against a local server speaking its wire format."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from mindscript.audio_io import decode_bytes
from mindscript.errors import ProviderAuthFailed, ProviderError, ProviderRateLimited, ProviderRejected
from mindscript.tts.base import TTSRequest
from mindscript.tts.openai import MAX_INPUT_CHARS, OpenAIProvider
from tests.servers import openai_server as oas

KEY = "sk-test-openai-SECRET-0123456789"


_OPEN: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


@pytest.fixture
def server() -> Iterator[oas.OpenAIServer]:
    with oas.OpenAIServer(api_key=KEY) as srv:
        yield srv  # type: ignore[misc]


def provider(server: oas.OpenAIServer, **kw: object) -> OpenAIProvider:
    made = OpenAIProvider(api_key=kw.pop("api_key", KEY), base_url=server.base_url,  # type: ignore[arg-type]
                          instructions="Speak slowly and calmly.", **kw)  # type: ignore[arg-type]
    _OPEN.append(made)
    return made


def test_request_body_and_pcm_audio(server: oas.OpenAIServer) -> None:
    tts = provider(server)
    audio = tts.synthesize(TTSRequest(text="Breathe in. Breathe out.", voice="nova", speed=0.9))
    [req] = server.speech_requests()
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.body == {"model": "gpt-4o-mini-tts", "voice": "nova", "input": "Breathe in. Breathe out.",
                        "response_format": "pcm", "speed": 0.9, "instructions": "Speak slowly and calmly."}
    assert (audio.fmt, audio.sample_rate, audio.channels) == ("pcm_s16le", 24000, 1)
    assert audio.data == oas.speech_like_pcm("nova|Breathe in. Breathe out.", 24000, 0.01 / 0.9)
    x = decode_bytes(audio.data, sample_rate=44100, channels=1, fmt_hint="pcm_s16le", pcm_rate=24000)
    assert abs(len(x) / 44100 - len(audio.data) / 2 / 24000) < 0.01 and np.abs(x).max() > 0.1


def test_tts1_sends_no_instructions_and_wav_decodes(server: oas.OpenAIServer) -> None:
    tts = provider(server, model="tts-1", response_format="wav")
    audio = tts.synthesize(TTSRequest(text="Rest.", voice="alloy"))
    [req] = server.speech_requests()
    assert "instructions" not in req.body and req.body["model"] == "tts-1" and req.body["response_format"] == "wav"
    assert audio.fmt == "wav" and audio.data[:4] == b"RIFF"
    x = decode_bytes(audio.data, sample_rate=24000, channels=1, fmt_hint="wav")
    assert len(x) == (len(audio.data) - 44) // 2


def test_limit_is_enforced_before_the_request(server: oas.OpenAIServer) -> None:
    tts = provider(server)
    assert tts.max_chars("gpt-4o-mini-tts") == MAX_INPUT_CHARS == 4096
    with pytest.raises(ProviderRejected, match="4096"):
        tts.synthesize(TTSRequest(text="a" * 4097, voice="nova"))
    assert server.speech_requests() == []
    tts.synthesize(TTSRequest(text="a" * 4096, voice="nova"))  # exactly at the limit is fine
    assert len(server.speech_requests()) == 1


@pytest.mark.parametrize(
    ("reply", "error"),
    [(oas.SERVER_ERROR, ProviderError), (oas.UNAVAILABLE, ProviderError), (oas.RATE_LIMITED, ProviderRateLimited),
     (oas.QUOTA, ProviderRejected), (oas.BAD_REQUEST, ProviderRejected)],
)
def test_errors_translate_and_the_sdk_does_not_retry(server: oas.OpenAIServer, reply: oas.Reply,
                                                      error: type[Exception]) -> None:
    server.fail_always = reply
    with pytest.raises(error) as info:
        provider(server).synthesize(TTSRequest(text="Hello.", voice="nova"))
    assert len(server.speech_requests()) == 1  # max_retries=0: the task owns retries
    assert KEY not in str(info.value)
    if reply is oas.QUOTA:
        assert "quota" in str(info.value) and "insufficient_quota" in str(info.value)


def test_bad_key_is_auth_failure_without_the_key(server: oas.OpenAIServer) -> None:
    wrong = "sk-wrong-SECRET-key-987654"
    with pytest.raises(ProviderAuthFailed, match="OPENAI_API_KEY") as info:
        provider(server, api_key=wrong).synthesize(TTSRequest(text="Hello.", voice="nova"))
    assert wrong not in str(info.value) and KEY not in str(info.value)
    assert wrong not in repr(provider(server, api_key=wrong))


def test_unreachable_server_is_transient() -> None:
    tts = OpenAIProvider(api_key=KEY, base_url="http://127.0.0.1:9/v1", timeout_s=2)
    _OPEN.append(tts)
    with pytest.raises(ProviderError, match="unreachable"):
        tts.synthesize(TTSRequest(text="Hello.", voice="nova"))
