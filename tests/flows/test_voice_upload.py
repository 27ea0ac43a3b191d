"""Uploaded recordings as the voice: fetched once (size cap), any codec, levelled like a synthesized voice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from mindscript.errors import AssetTooLarge, PermanentError
from mindscript.settings import get_settings
from tests.flows.test_voice import make_job, run
from tests.measure import lufs


def recording(seconds: float = 12.0, rate: int = 48000, level: float = 0.02) -> np.ndarray:
    """A quiet speech-like recording (far below the target), stereo."""
    from examples.make_assets import speech_like

    x = speech_like(seconds, rate)
    x = x / np.max(np.abs(x)) * level
    return np.repeat(x.reshape(len(x), -1)[:, :1], 2, axis=1).astype(np.float32)


@pytest.fixture
def file_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str]]]:
    # A plain-http loopback server: both need an explicit allowance (https and public addresses only by default).
    monkeypatch.setenv("ALLOW_HTTP_ASSETS", "true")
    monkeypatch.setenv("ASSET_ALLOW_PRIVATE_NETWORKS", "127.0.0.1/32")
    get_settings.cache_clear()
    served = tmp_path / "served"
    served.mkdir()
    hits: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            hits.append(self.path)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def test_url_recording_mp3_is_downloaded_once_and_levelled(worker_env: Path, file_server: Any) -> None:
    from examples.make_assets import write_mp3

    origin, hits = file_server
    src = recording()
    write_mp3(worker_env / "served" / "take.mp3", src, 48000)
    stem = run(make_job("", f"upload:{origin}/take.mp3?token=abc"), worker_env)
    assert [h for h in hits if "take.mp3" in h] and len([h for h in hits if "take.mp3" in h]) == 1
    assert stem.provider == "upload" and "token" not in stem.voice and stem.chunks == 0
    x, rate = sf.read(stem.path, dtype="float32")
    assert rate == 44100 and abs(len(x) / rate - 12.0) < 0.1  # resampled to the render rate
    assert lufs(src, 48000) < -30  # the take is quiet...
    assert abs(stem.measured_lufs - get_settings().target_lufs) <= 1.0  # ...the stem is on target like TTS


def test_storage_path_recording_flac_without_local_files(worker_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOW_LOCAL_ASSETS", "false")
    get_settings.cache_clear()
    uploads = worker_env / "output" / "uploads"
    uploads.mkdir(parents=True)
    sf.write(uploads / "take.flac", recording(6.0, 44100), 44100)
    stem = run(make_job("", "upload:uploads/take.flac"), worker_env)
    assert stem.provider == "upload" and abs(stem.frames / 44100 - 6.0) < 0.05
    outside = worker_env / "elsewhere.flac"
    sf.write(outside, recording(2.0, 44100), 44100)
    with pytest.raises(PermanentError, match="local files are not allowed"):
        run(make_job("", f"upload:{outside}"), worker_env, "ws2")
    with pytest.raises(PermanentError):
        run(make_job("", "upload:../elsewhere.flac"), worker_env, "ws3")


def test_recording_over_the_size_cap(worker_env: Path, file_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    origin, _ = file_server
    sf.write(worker_env / "served" / "big.wav", recording(5.0), 48000)
    monkeypatch.setenv("MAX_ASSET_BYTES", "4096")
    get_settings.cache_clear()
    with pytest.raises(AssetTooLarge, match="4096"):
        run(make_job("", f"upload:{origin}/big.wav"), worker_env)


def test_render_job_with_an_uploaded_voice_and_no_script(worker_env: Path, file_server: Any) -> None:
    from flows.render import render_job
    from mindscript.job import parse_job

    origin, _ = file_server
    sf.write(worker_env / "served" / "take.ogg", recording(8.0), 48000, format="OGG", subtype="VORBIS")
    result = render_job(parse_job({"id": "upload-1", "payload": {"projectData": {
        "scriptText": "", "voiceRef": f"upload:{origin}/take.ogg", "durationMin": 0.5}}}))
    meta = result["data"]["metadata"]
    assert meta["layers"]["used"][0] == "voice" and meta["tts"]["provider"] == "upload"
    assert abs(meta["loudness"]["speechLufs"] - get_settings().target_lufs) <= 1.0


# -- upload:<key> in remote storage: streamed by the storage adapter, inside RECORDINGS_PREFIX ---------------
@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from tests.servers.process import server_process

    with server_process("tests.servers.storage_s3") as port:
        yield f"http://127.0.0.1:{port}"


def _s3_requests(endpoint: str) -> list[list[str]]:
    import json
    import urllib.request

    return json.loads(urllib.request.urlopen(f"{endpoint}/_faults").read())["requests"]


def test_s3_storage_key_recording(worker_env: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    for name, value in {"STORAGE_BACKEND": "s3", "S3_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "rec-key",
                        "AWS_SECRET_ACCESS_KEY": "rec-secret", "PRIVATE_BUCKET": "rec-private",
                        "RECORDINGS_BUCKET": "rec-uploads", "ALLOW_LOCAL_ASSETS": "false",
                        "STORAGE_RETRY_DELAY_S": "0.01"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    sf.write(worker_env / "take.flac", recording(12.0, 48000), 48000)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="rec-key",
                      aws_secret_access_key="rec-secret")
    s3.create_bucket(Bucket="rec-uploads")
    s3.upload_file(str(worker_env / "take.flac"), "rec-uploads", "uploads/u1/take.flac")
    s3.put_object(Bucket="rec-uploads", Key="renders/other.flac", Body=(worker_env / "take.flac").read_bytes())
    s3.close()

    stem = run(make_job("", "upload:uploads/u1/take.flac"), worker_env)
    assert stem.provider == "upload" and stem.voice == "take.flac" and abs(stem.frames / 44100 - 12.0) < 0.05
    assert abs(stem.measured_lufs - get_settings().target_lufs) <= 1.0
    gets = [r for r in _s3_requests(s3_endpoint) if r[0] == "GET" and r[1] == "/rec-uploads/uploads/u1/take.flac"]
    assert len(gets) == 1
    before = len(_s3_requests(s3_endpoint))
    for ref, error in (("upload:renders/other.flac", "outside the configured prefix"),  # in the bucket, not a take
                       ("upload:uploads/../renders/other.flac", "'..' segment")):
        with pytest.raises(PermanentError, match=error):
            run(make_job("", ref), worker_env, "ws2")
    assert len(_s3_requests(s3_endpoint)) == before  # refused before any request
    with pytest.raises(PermanentError, match="not found in bucket 'rec-uploads'"):
        run(make_job("", "upload:uploads/u1/missing.flac"), worker_env, "ws3")


def test_supabase_storage_key_recording_and_size_cap(worker_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.servers.storage_supabase import SupabaseStorageServer

    key = "service-role-key-upload-voice"
    with SupabaseStorageServer(worker_env / "supabase", key) as server:
        for name, value in {"STORAGE_BACKEND": "supabase", "SUPABASE_URL": server.url,
                            "SUPABASE_SERVICE_KEY": key, "PRIVATE_BUCKET": "voice-private",
                            "ALLOW_LOCAL_ASSETS": "false", "STORAGE_RETRY_DELAY_S": "0.01"}.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        from mindscript.services import build_storage

        path = worker_env / "take.ogg"
        sf.write(path, recording(12.0), 48000, format="OGG", subtype="VORBIS")
        build_storage(get_settings()).put(path, "uploads/take.ogg", content_type="audio/ogg", public=False,
                                          sha256="0" * 64)
        server.fail("GET", "/storage/v1/object/voice-private/", 503, 1)
        stem = run(make_job("", "upload:uploads/take.ogg"), worker_env)
        assert stem.provider == "upload" and abs(stem.frames / 44100 - 12.0) < 0.05
        assert abs(stem.measured_lufs - get_settings().target_lufs) <= 1.0
        assert len(server.calls("GET", "/storage/v1/object/voice-private/uploads/take.ogg")) == 2  # 503, then it
        monkeypatch.setenv("MAX_ASSET_BYTES", "4096")
        get_settings.cache_clear()
        with pytest.raises(AssetTooLarge, match="4096"):
            run(make_job("", "upload:uploads/take.ogg"), worker_env, "ws2")
        # the service key travels in the auth headers only, never in a URL or a body
        assert key not in " ".join(f"{r.path} {r.query} {r.json}" for r in server.requests)
