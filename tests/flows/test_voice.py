"""The voice track on Prefect: chunk tasks against local vendor servers through the real SDKs.

Checks the issue's properties: limits, order, exact pauses, cache (no second billing, concurrent renders
synthesize once), retry counts, no retry for permanent errors, fallback, request bodies, no secrets.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prefect import flow

from mindscript.errors import ProviderAuthFailed, ProviderRejected
from mindscript.job import RenderJob, parse_job
from mindscript.settings import get_settings
from mindscript.voice import TRIM_KEEP_S, VoiceStem
from tasks.render import generate_voice
from tests.servers import elevenlabs_server as els
from tests.servers import openai_server as oas
from tests.servers._http import speech_like_pcm

OPENAI_KEY = "sk-test-SECRET-openai-0123456789abcdef"
XI_KEY = "xi-test-SECRET-elevenlabs-fedcba9876"


@flow(name="voice-only")
def voice_only(job: RenderJob, workspace: str) -> VoiceStem:
    return generate_voice.submit(job, workspace).result()


@pytest.fixture
def openai(worker_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[oas.OpenAIServer]:
    with oas.OpenAIServer(api_key=OPENAI_KEY, seconds_per_char=0.004) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("TTS_RETRY_DELAY_S", "0.01")
        monkeypatch.setenv("TTS_FALLBACK", "")
        get_settings.cache_clear()
        yield srv  # type: ignore[misc]
    get_settings.cache_clear()


@pytest.fixture
def eleven(worker_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[els.ElevenLabsServer]:
    with els.ElevenLabsServer(api_key=XI_KEY, seconds_per_char=0.004) as srv:
        monkeypatch.setenv("ELEVENLABS_API_KEY", XI_KEY)
        monkeypatch.setenv("ELEVENLABS_BASE_URL", srv.base_url)
        monkeypatch.setenv("TTS_RETRY_DELAY_S", "0.01")
        monkeypatch.setenv("TTS_FALLBACK", "")
        get_settings.cache_clear()
        yield srv  # type: ignore[misc]
    get_settings.cache_clear()


def make_job(script: str, voice_ref: str, job_id: str = "voice-1", **voice_layer: Any) -> RenderJob:
    return parse_job({"id": job_id, "payload": {"projectData": {
        "scriptText": script, "voiceRef": voice_ref, "durationMin": 60,
        "layers": {"voice": {"enabled": True, **voice_layer}}}}})


def run(job: RenderJob, root: Path, name: str = "ws") -> VoiceStem:
    ws = root / name
    ws.mkdir(exist_ok=True)
    return voice_only(job, str(ws))


SENTENCES = ["Breathe in slowly through your nose.", "Let the air fill your chest, and then your belly.",
             "Hold it gently for a moment, without strain.", "Now breathe out, long and soft, through the mouth.",
             "Feel your shoulders drop as the breath leaves you.", "Notice the weight of your hands in your lap."]


def long_script(chars: int) -> tuple[str, list[float]]:
    """About ``chars`` characters in paragraphs separated by pause markers; returns (script, pauses)."""
    paragraphs, pauses, total, i = [], [], 0, 0
    markers = [("[pause 3s]", 3.0), ('<break time="1.5s"/>', 1.5), ("[pause 500ms]", 0.5)]
    while total < chars:
        para = " ".join(SENTENCES[(i + k) % len(SENTENCES)] + f" ({i}.{k})" for k in range(110))
        paragraphs.append(para)
        total += len(para)
        i += 1
    script = ""
    for j, para in enumerate(paragraphs):
        script += para
        if j + 1 < len(paragraphs):
            marker, seconds = markers[j % len(markers)]
            script += f" {marker} "
            pauses.append(seconds)
    return script, pauses


def zero_runs(x: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """(start, length) of runs of exact zeros at least ``min_len`` long."""
    zero = np.concatenate([[False], x == 0.0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    return [(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True) if e - s >= min_len]


def f0(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    band = (freqs >= 100) & (freqs <= 205)
    return float(freqs[band][np.argmax(spectrum[band])])


def test_long_script_limits_order_and_exact_pauses(openai: oas.OpenAIServer, worker_env: Path) -> None:
    import soundfile as sf

    script, pauses = long_script(20_000)
    assert len(script) >= 20_000
    stem = run(make_job(script, "openai:nova"), worker_env)
    requests = openai.speech_requests()
    assert requests and all(len(r.body["input"]) <= 4000 for r in requests)  # min(TTS_CHUNK_SIZE, 4096)
    assert all(r.body["model"] == "gpt-4o-mini-tts" and r.body["voice"] == "nova" for r in requests)
    assert all(r.body["response_format"] == "pcm" and "calm" in r.body["instructions"] for r in requests)
    assert stem.provider == "openai" and stem.model == "gpt-4o-mini-tts" and stem.chunks == len(requests)
    assert stem.characters == sum(len(r.body["input"]) for r in requests) and stem.cache_hits == 0
    assert stem.estimated_cost_usd == pytest.approx(stem.characters * 12.0 / 1e6)

    x, rate = sf.read(stem.path, dtype="float32")
    # Every pause marker is exact digital silence of the requested length (plus at most the faded edge
    # samples of the neighbouring chunks); chunk joins inside a paragraph are the 0.35 s breath.
    runs = zero_runs(x, int(0.3 * rate))
    expected_gaps = []
    texts = []
    from mindscript.script import Pause, Speech, chunk_text, parse_script
    for seg in parse_script(script):
        if isinstance(seg, Pause):
            expected_gaps.append(seg.seconds)
        elif isinstance(seg, Speech):
            pieces = chunk_text(seg.text, 4000)
            texts.extend(pieces)
            expected_gaps.extend([0.35] * (len(pieces) - 1))
    assert len(runs) == len(expected_gaps) == len(texts) - 1
    for (_, length), seconds in zip(runs, expected_gaps, strict=True):
        # each neighbouring chunk keeps at most TRIM_KEEP_S of its own edge silence
        assert round(seconds * rate) <= length <= round(seconds * rate) + int(2 * TRIM_KEEP_S * rate) + 2
    assert [p for p in expected_gaps if p != 0.35] == pauses
    # Order: each segment between the gaps has the pitch of the chunk the server voiced for that text.
    bounds = [0] + [b for s, n in runs for b in (s, s + n)] + [len(x)]
    seg_f0 = [f0(x[a:b], rate) for a, b in zip(bounds[::2], bounds[1::2], strict=True)]
    import hashlib
    want = [110.0 + int.from_bytes(hashlib.sha256(f"nova|{t}".encode()).digest()[:4], "little") % 90 for t in texts]
    assert seg_f0 == pytest.approx(want, abs=0.5)
    assert len(speech_like_pcm("x", 24000, 0.0)) > 0


def test_second_render_makes_no_requests(openai: oas.OpenAIServer, worker_env: Path) -> None:
    script, _ = long_script(6000)
    first = run(make_job(script, "openai:nova"), worker_env, "a")
    n = len(openai.speech_requests())
    second = run(make_job(script, "openai:nova", job_id="voice-2"), worker_env, "b")
    assert len(openai.speech_requests()) == n
    assert second.cache_hits == second.chunks == first.chunks and second.estimated_cost_usd == 0.0
    import soundfile as sf
    assert np.array_equal(sf.read(first.path)[0], sf.read(second.path)[0])


def test_store_hit_without_prefect_record(openai: oas.OpenAIServer, worker_env: Path) -> None:
    """Audio already in the store is not billed again even when Prefect's records are gone."""
    import shutil
    job = make_job("Rest here. " * 30, "openai:nova")
    run(job, worker_env, "a")
    n = len(openai.speech_requests())
    shutil.rmtree(worker_env / "tts-cache" / ".records")
    again = run(job, worker_env, "b")
    assert len(openai.speech_requests()) == n and again.cache_hits == again.chunks


def render_concurrently_once_each(server: oas.OpenAIServer, worker_env: Path, prefix: str) -> list[VoiceStem]:
    """Two renders of one 9,000-character script at once; asserts every chunk was requested exactly once."""
    server.delay_s = 0.3
    script, _ = long_script(9000)
    results: list[Any] = [None, None]

    def render(i: int) -> None:
        try:
            results[i] = run(make_job(script, "openai:nova", job_id=f"{prefix}{i}"), worker_env, f"w{i}")
        except BaseException as exc:  # surfaced below
            results[i] = exc

    threads = [threading.Thread(target=render, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(r, VoiceStem) for r in results), results
    texts = [r.body["input"] for r in server.speech_requests()]
    assert len(texts) == len(set(texts)) == results[0].chunks  # each chunk requested once
    assert results[0].cache_hits + results[1].cache_hits == results[0].chunks
    return results


def test_concurrent_renders_synthesize_each_chunk_once(openai: oas.OpenAIServer, worker_env: Path) -> None:
    render_concurrently_once_each(openai, worker_env, "c")


@pytest.mark.parametrize("fault", [oas.SERVER_ERROR, oas.UNAVAILABLE, oas.RATE_LIMITED])
def test_transient_twice_then_success(openai: oas.OpenAIServer, worker_env: Path, fault: oas.Reply) -> None:
    openai.fail_next(fault, fault)
    stem = run(make_job("Breathe in. Breathe out.", "openai:nova"), worker_env)
    assert len(openai.speech_requests()) == 3 and stem.provider == "openai"


def test_transient_forever_is_four_requests(openai: oas.OpenAIServer, worker_env: Path) -> None:
    openai.fail_always = oas.UNAVAILABLE
    with pytest.raises(Exception, match="503"):
        run(make_job("Breathe in. Breathe out.", "openai:nova"), worker_env)
    assert len(openai.speech_requests()) == 4  # 1 + TTS_RETRIES, the SDK adds none


@pytest.mark.parametrize(("fault", "error", "words"), [
    (oas.BAD_REQUEST, ProviderRejected, "rejected"),
    (oas.error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"), ProviderAuthFailed,
     "OPENAI_API_KEY"),
    (oas.QUOTA, ProviderRejected, "quota"),
])
def test_permanent_errors_fail_at_once(openai: oas.OpenAIServer, worker_env: Path, fault: oas.Reply,
                                       error: type[Exception], words: str) -> None:
    openai.fail_always = fault
    with pytest.raises(error, match=words) as info:
        run(make_job("Breathe in. Breathe out.", "openai:nova"), worker_env)
    assert len(openai.speech_requests()) == 1
    assert OPENAI_KEY not in str(info.value)


def test_elevenlabs_busy_then_success_with_context(eleven: els.ElevenLabsServer, worker_env: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_CHUNK_SIZE", "200")
    get_settings.cache_clear()
    eleven.fail_next(els.BUSY, els.CONCURRENT)
    script = " ".join(f"{s[:-1]} number {i}." for i, s in enumerate(SENTENCES * 3))  # no two chunks alike
    stem = run(make_job(script, f"elevenlabs:{els.VOICE_ID}"), worker_env)
    reqs = eleven.tts_requests()
    ok = [r for r in reqs if r.body]
    assert len(reqs) == stem.chunks + 2 and stem.provider == "elevenlabs"
    by_text = {r.body["text"]: r.body for r in ok}
    from mindscript.script import chunk_text
    chunks = chunk_text(script, 200)
    assert len(chunks) == stem.chunks > 2
    for i, text in enumerate(chunks):
        body = by_text[text]
        assert body.get("previous_text") == (chunks[i - 1] if i else None)
        assert body.get("next_text") == (chunks[i + 1] if i + 1 < len(chunks) else None)
        assert body["model_id"] == "eleven_multilingual_v2"


def test_primary_down_whole_track_from_fallback(openai: oas.OpenAIServer, eleven: els.ElevenLabsServer,
                                                worker_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_FALLBACK", "elevenlabs,local")
    monkeypatch.setenv("TTS_CHUNK_SIZE", "300")
    get_settings.cache_clear()
    script = " ".join(SENTENCES * 3)
    openai.fail_next(*[oas.UNAVAILABLE] * 4)  # the first chunk to arrive fails all its attempts
    stem = run(make_job(script, "openai:nova"), worker_env)
    assert stem.provider == "elevenlabs" and stem.voice == els.VOICE_ID
    assert len(eleven.tts_requests()) == stem.chunks  # every chunk re-voiced, not only the failed one
    assert any("re-voiced by fallback provider 'elevenlabs'" in w for w in stem.warnings)
    assert any("'openai' failed" in w and "503" in w for w in stem.warnings)


def test_local_is_the_last_fallback(openai: oas.OpenAIServer, worker_env: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_FALLBACK", "elevenlabs,local")  # elevenlabs has no key here: skipped
    get_settings.cache_clear()
    openai.fail_always = oas.QUOTA
    stem = run(make_job("Breathe in. Breathe out.", "openai:nova"), worker_env)
    assert stem.provider == "local" and len(openai.speech_requests()) == 1
    assert any("quota" in w for w in stem.warnings)


def test_no_secret_in_logs_errors_or_results(openai: oas.OpenAIServer, worker_env: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    from flows.render import render_job

    caplog.set_level(logging.DEBUG)
    job = parse_job({"id": "secret-check", "payload": {"projectData": {
        "scriptText": "Breathe in. [pause 1s] Breathe out.", "voiceRef": "openai:nova", "durationMin": 0.5}}})
    result = render_job(job)
    assert result["success"] and result["data"]["metadata"]["tts"]["provider"] == "openai"
    assert result["data"]["metadata"]["tts"]["chunks"] == 2
    openai.fail_always = oas.error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
    with pytest.raises(ProviderAuthFailed) as info:
        run(make_job("Something new.", "openai:nova"), worker_env)
    text = json.dumps(result) + caplog.text + str(info.value) + repr(info.value)
    assert OPENAI_KEY not in text and OPENAI_KEY[-12:] not in text


def test_provider_concurrency_is_bounded(openai: oas.OpenAIServer, worker_env: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_CONCURRENCY_OPENAI", "2")
    monkeypatch.setenv("TTS_CHUNK_SIZE", "120")
    get_settings.cache_clear()
    openai.delay_s = 0.3
    script = " ".join(f"{s[:-1]} number {i}." for i, s in enumerate(SENTENCES * 2))
    stem = run(make_job(script, "openai:nova"), worker_env)
    assert stem.chunks >= 6 and openai.max_active == 2
