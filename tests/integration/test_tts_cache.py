"""The content-hash cache key, the audio stores and the voice plan (pure, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mindscript.errors import ProviderError
from mindscript.job import parse_job
from mindscript.settings import Settings
from mindscript.tts.base import TTSRequest
from mindscript.tts.cache import LocalAudioStore, cache_key, fetch_or_synthesize
from mindscript.tts.fake import FakeProvider
from mindscript.voice import ChunkSpec, VoiceChoice, plan_voice

BASE = dict(provider="openai", model="gpt-4o-mini-tts", voice="nova", output_format="pcm_s16le/24000/1",
            text="Breathe in.", speed=1.0, instructions="calm", voice_settings={"a": 1},
            previous_text=None, next_text=None)


def test_key_is_namespaced_stable_and_sensitive_to_every_input() -> None:
    key = cache_key(**BASE)  # type: ignore[arg-type]
    assert key.startswith("tts-v1-") and len(key) == len("tts-v1-") + 64
    assert key == cache_key(**BASE)  # type: ignore[arg-type]
    changes = dict(provider="elevenlabs", model="tts-1", voice="alloy", output_format="wav/24000/1",
                   text="Breathe out.", speed=0.9, instructions="fast", voice_settings={"a": 2},
                   previous_text="x", next_text="y")
    for field, value in changes.items():
        assert cache_key(**{**BASE, field: value}) != key, field  # type: ignore[arg-type]
    assert cache_key(**BASE, version=2).startswith("tts-v2-")  # type: ignore[arg-type]


def test_local_store_round_trip_and_no_second_request(tmp_path: Path) -> None:
    store = LocalAudioStore(tmp_path)
    fake = FakeProvider(failures=[ProviderError("boom")])
    req = TTSRequest(text="Rest here.", voice="v")
    with pytest.raises(ProviderError):
        fetch_or_synthesize(store, "tts-v1-" + "a" * 64, fake, req, fake.audio_format)
    ref = fetch_or_synthesize(store, "tts-v1-" + "a" * 64, fake, req, fake.audio_format)
    again = fetch_or_synthesize(store, "tts-v1-" + "a" * 64, fake, req, fake.audio_format)
    assert not ref.cached and again.cached and len(fake.calls) == 2 and ref.size == again.size
    assert store.get(ref.key) == store.path(ref.key).read_bytes() and store.size(ref.key) == ref.size
    with pytest.raises(ValueError):
        store.get("../../etc/passwd")


def test_plan_keeps_pauses_out_of_requests_and_context_only_where_used() -> None:
    job = parse_job({"id": "p", "payload": {"projectData": {
        "scriptText": "One. Two. [pause 4s] Three.\n\nFour.", "durationMin": 5}}})
    fake = FakeProvider(max_chars_limit=6)
    plan = plan_voice(job, Settings(), fake, VoiceChoice("fake", "v", None))
    assert [i.request.text if isinstance(i, ChunkSpec) else i for i in plan.items] == \
        ["One.", 0.35, "Two.", 4.0, "Three.", 2.0, "Four."]
    assert all(c.request.previous_text is None for c in plan.chunks)
    fake.uses_context = True  # type: ignore[attr-defined]
    plan2 = plan_voice(job, Settings(), fake, VoiceChoice("fake", "v", None))
    assert [c.request.previous_text for c in plan2.chunks] == [None, "One.", "Two.", "Three."]
    assert [c.request.next_text for c in plan2.chunks] == ["Two.", "Three.", "Four.", None]
    assert {c.key for c in plan.chunks}.isdisjoint({c.key for c in plan2.chunks})


def test_s3_store_round_trip_over_the_s3_protocol() -> None:
    """S3AudioStore against moto's S3 (in process): put, get, missing key, and errors translated."""
    import boto3
    from moto import mock_aws

    from mindscript.errors import StorageError
    from mindscript.tts.cache import S3AudioStore

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket="tts")
        store = S3AudioStore(client, "tts", "cache")
        key = "tts-v1-" + "b" * 64
        assert store.get(key) is None and store.size(key) is None
        fake = FakeProvider()
        ref = fetch_or_synthesize(store, key, fake, TTSRequest(text="Rest.", voice="v"), fake.audio_format)
        assert not ref.cached and client.head_object(Bucket="tts", Key=f"cache/{key}")["ContentLength"] == ref.size
        again = fetch_or_synthesize(store, key, fake, TTSRequest(text="Rest.", voice="v"), fake.audio_format)
        assert again.cached and len(fake.calls) == 1 and store.identity == "s3://tts/cache"
        assert store.size(key) == ref.size
        with pytest.raises(StorageError, match="NoSuchBucket"):
            S3AudioStore(client, "missing").put(key, b"x")
