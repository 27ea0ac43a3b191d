"""The random fault knobs of the test servers (used by the soak, bench/soak.py): rate, seed, stall, and the
per-chunk request count the soak checks "requests per chunk <= 1 + retries" with."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.servers import openai_server as oas
from tests.servers.elevenlabs_server import VOICE_ID, ElevenLabsServer
from tests.servers.openai_server import OpenAIServer
from tests.servers.process import server_process


def _post(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float = 10.0) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _speech(server: OpenAIServer, text: str, voice: str = "nova", timeout: float = 10.0) -> int:
    return _post(f"{server.base_url}/audio/speech",
                 {"model": "tts-1", "input": text, "voice": voice, "response_format": "pcm"},
                 {"Authorization": f"Bearer {server.api_key}"}, timeout)


def test_fault_rate_answers_that_fraction_with_the_given_replies_repeatably() -> None:
    statuses: list[list[int]] = []
    for _ in range(2):
        with OpenAIServer(fault_rate=0.3, fault_replies=(oas.RATE_LIMITED, oas.UNAVAILABLE), seed=11) as server:
            statuses.append([_speech(server, f"line {i}") for i in range(60)])
            assert sum(server.injected.values()) == sum(s != 200 for s in statuses[-1])
    assert statuses[0] == statuses[1]  # the seed makes the run repeatable
    faults = [s for s in statuses[0] if s != 200]
    assert set(faults) == {429, 503}
    assert 8 <= len(faults) <= 30, len(faults)  # about 30 % of 60


def test_stall_outlasts_the_client_timeout_and_the_server_survives_the_hang_up() -> None:
    with OpenAIServer(fault_rate=1.0, stall_s=1.5, seed=1) as server:
        with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
            _speech(server, "slow", timeout=0.5)
        assert server.injected == {"stall": 1}
        server.fault_rate = 0.0
        assert _speech(server, "fast") == 200


def test_requests_are_counted_per_voice_and_text() -> None:
    with OpenAIServer() as openai, ElevenLabsServer() as eleven:
        for text in ("a", "a", "b"):
            assert _speech(openai, text) == 200
        assert _speech(openai, "a", voice="alloy") == 200
        counts = sorted((n, v, t) for n, v, t in openai.by_chunk().values())
        assert counts == [(1, "alloy", "a"), (1, "nova", "b"), (2, "nova", "a")]
        for context in ({}, {}, {"next_text": "Goodbye."}):  # other neighbours: another chunk
            status = _post(f"{eleven.base_url}/v1/text-to-speech/{VOICE_ID}?output_format=pcm_24000",
                           {"text": "hello", "model_id": "eleven_multilingual_v2", **context},
                           {"xi-api-key": eleven.api_key})
            assert status == 200
        assert sorted(eleven.by_chunk().values()) == [(1, VOICE_ID, "hello"), (2, VOICE_ID, "hello")]


def test_s3_fault_injector_rate_and_seed() -> None:
    with server_process("tests.servers.storage_s3") as port:
        base = f"http://127.0.0.1:{port}"
        _post(f"{base}/_faults", {"method": "GET", "status": 503, "code": "SlowDown", "rate": 0.5, "seed": 3,
                                  "count": 1000}, {})
        codes = []
        for _ in range(40):
            try:
                with urllib.request.urlopen(f"{base}/no-such-bucket", timeout=10) as resp:
                    codes.append(resp.status)
            except urllib.error.HTTPError as exc:
                codes.append(exc.code)
        with urllib.request.urlopen(f"{base}/_faults", timeout=10) as resp:
            state = json.loads(resp.read())
        injected = codes.count(503)
        assert 8 <= injected <= 32, codes
        assert state["injected"] == injected and state["by_status"] == {"503": injected}
        assert set(codes) - {503} == {404}  # the rest reached moto (no such bucket)
