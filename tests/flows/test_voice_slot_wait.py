"""A TTS request does not wait forever for a slot of the global limit ``tts-<provider>``: on a server that never
revokes a killed worker's expired lease (an ephemeral one runs no repossessor) the slot stays taken for good.
Found by the soak (bench/soak.py): two renders SIGKILLed mid-request left tts-elevenlabs 2/2 taken and every
later ElevenLabs render hung in GENERATING_VOICE."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mindscript.settings import get_settings
from tasks import voice as voice_tasks


@pytest.fixture
def one_slot(worker_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TTS_CONCURRENCY_OPENAI", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-slot")
    get_settings.cache_clear()
    voice_tasks._LIMITS.clear()
    yield
    voice_tasks._LIMITS.clear()
    get_settings.cache_clear()


def test_a_slot_held_for_good_delays_the_request_by_the_wait_bound_only(
        one_slot: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.concurrency.sync import concurrency

    settings = get_settings()
    name = voice_tasks.ensure_provider_limit(settings, "openai")
    assert name == "tts-openai"
    taken, release = threading.Event(), threading.Event()

    def squatter() -> None:  # stands for a killed render whose lease nobody revokes
        with concurrency(name, occupy=1, lease_duration=60):
            taken.set()
            release.wait(60)

    thread = threading.Thread(target=squatter, daemon=True)
    thread.start()
    try:
        assert taken.wait(30)
        monkeypatch.setattr(voice_tasks, "SLOT_WAIT_S", 1.5)
        started = time.monotonic()
        with voice_tasks.provider_slot("openai", settings):
            waited = time.monotonic() - started
        assert 1.0 <= waited < 15.0, waited
        assert "no slot of global concurrency limit 'tts-openai'" in caplog.text
    finally:
        release.set()
        thread.join(30)

    # with the slot free again, the request takes it without waiting for the bound
    caplog.clear()
    started = time.monotonic()
    with voice_tasks.provider_slot("openai", settings):
        pass
    assert time.monotonic() - started < 1.5 and "no slot" not in caplog.text
