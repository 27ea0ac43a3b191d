"""Hostile downloads inside a real render (issue 7): a refused or unusable background is skipped with a warning
and the job completes; an unusable uploaded voice fails the job with a clear error. Nothing in the result
carries a token or a workspace path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from flows.render import render_job
from mindscript.errors import AssetTooLarge
from mindscript.job import parse_job
from mindscript.settings import get_settings
from tests.servers.assets import AssetServer, make_pki, send_bytes, send_file

FIELD = "payload.projectData.layers.background.trackUrl"
SECRET = "X-Amz-Signature=SECRET-123"


@pytest.fixture
def https(tmp_path: Path, worker_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AssetServer]:
    ctx, ca = make_pki(tmp_path / "pki", dns=("localhost",))
    monkeypatch.setenv("ALLOW_LOCAL_ASSETS", "false")  # as a queue job
    monkeypatch.setenv("ASSET_CA_BUNDLE", str(ca))
    get_settings.cache_clear()
    with AssetServer("127.0.0.1", tls=ctx) as server:
        yield server
    get_settings.cache_clear()


def _job(job_id: str, track: str | None = None, voice_ref: str | None = None) -> Any:
    layers: dict[str, Any] = {"solfeggio": {"enabled": True, "hz": 528}, "binaural": {"enabled": False}}
    if track:
        layers["background"] = {"enabled": True, "trackUrl": track}
    project: dict[str, Any] = {"scriptText": "", "durationMin": 0.25, "layers": layers}
    if voice_ref:
        project["voiceRef"] = voice_ref
    return parse_job({"id": job_id, "payload": {"projectData": project, "outputOptions": {"format": "wav"}}})


def _skipped_background(result: dict[str, Any]) -> str:
    meta = result["data"]["metadata"]
    assert result["success"] is True and "background" not in meta["layers"]["used"]
    assert "solfeggio" in meta["layers"]["used"]
    (skip,) = [s for s in meta["layers"]["skipped"] if s["layer"] == "background"]
    assert any(w.startswith("background layer skipped: ") for w in meta["warnings"])
    return str(skip["reason"])


def test_refused_background_is_skipped_and_the_server_never_contacted(https: AssetServer, worker_env: Path) -> None:
    https.routes["/bed.mp3"] = send_bytes(b"\0" * 1000)
    result = render_job(_job("hostile-bg-1", https.url(f"/bed.mp3?{SECRET}", host="localhost")))
    reason = _skipped_background(result)
    assert reason.startswith(f"{FIELD}: host 'localhost'") and "a loopback address" in reason
    assert https.connections == 0
    assert "SECRET" not in json.dumps(result)


def test_non_audio_background_is_skipped_with_the_field_named(https: AssetServer, worker_env: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSET_ALLOW_PRIVATE_NETWORKS", "127.0.0.1/32")
    get_settings.cache_clear()
    https.routes["/bed.mp3"] = send_bytes(b"<html><body>Session expired</body></html>" * 40, content_type="text/html")
    result = render_job(_job("hostile-bg-2", https.url(f"/bed.mp3?{SECRET}", host="localhost")))
    reason = _skipped_background(result)
    assert reason.startswith(f"{FIELD}: 'https://localhost:{https.port}/bed.mp3': ") and "decoded" in reason
    text = json.dumps(result)
    assert "SECRET" not in text and str(worker_env / "work") not in text
    assert len(https.requests) == 1  # fetched once: an unusable file is not retried
    assert list((worker_env / "work").iterdir()) == []


def test_uploaded_voice_bomb_fails_the_job_clearly(https: AssetServer, worker_env: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSET_ALLOW_PRIVATE_NETWORKS", "127.0.0.1/32")
    monkeypatch.setenv("MAX_DURATION_MINUTES", "1")
    get_settings.cache_clear()
    bomb = worker_env / "bomb.flac"
    with sf.SoundFile(bomb, "w", samplerate=8000, channels=1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(30):  # 30 minutes of silence in a few tens of KB
            f.write(np.zeros(8000 * 60, dtype=np.int16))
    https.routes["/take.flac"] = send_file(bomb, "audio/flac")
    with pytest.raises(AssetTooLarge, match="decodes to more than 60 s") as info:
        render_job(_job("hostile-voice-1", voice_ref=f"upload:{https.url(f'/take.flac?{SECRET}', host='localhost')}"))
    assert "SECRET" not in info.value.message
    assert len(https.requests) == 1
    assert list((worker_env / "work").iterdir()) == []
