"""Supabase backend (storage3 + TUS) against a local server speaking the Storage API routes."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from mindscript.errors import StorageBucketRejected
from mindscript.storage.base import RetryPolicy, render_key
from mindscript.storage.supabase import SupabaseConfig, SupabaseStorage
from tests.servers.storage_supabase import SupabaseStorageServer

KEY = "service-role-key-for-tests"
MIB = 1 << 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SupabaseStorageServer]:
    with SupabaseStorageServer(tmp_path / "server", KEY) as s:
        yield s


def _storage(server: SupabaseStorageServer, **changes: object) -> SupabaseStorage:
    config = dict(url=server.url, service_key=SecretStr(KEY), public_bucket="audio-public",
                  private_bucket="audio-private", signed_url_ttl=900, timeout_s=30.0)
    config.update(changes)
    return SupabaseStorage(SupabaseConfig(**config), RetryPolicy(retries=5, base_delay_s=0.01))  # type: ignore[arg-type]


def _file(path: Path, size: int) -> tuple[Path, str]:
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _get(url: str) -> tuple[bytes, object]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read(), resp.headers


def test_private_upload_headers_body_and_signed_url(server: SupabaseStorageServer, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "a.mp3", 200_000)
    key = render_key("job-1", digest, "mp3")
    progress: list[float] = []
    stored = _storage(server).put(path, key, content_type="audio/mpeg", public=False, sha256=digest,
                                  on_progress=progress.append)
    # the missing private bucket was created private
    created = server.calls("POST", "/storage/v1/bucket")
    assert [c.json for c in created] == [{"id": "audio-private", "name": "audio-private", "public": False}]
    (upload,) = server.calls("POST", "/storage/v1/object/audio-private/")
    assert upload.path == f"/storage/v1/object/audio-private/{key}"
    assert upload.headers["authorization"] == f"Bearer {KEY}" and upload.headers["apikey"] == KEY
    assert upload.headers["x-upsert"] == "true"  # the string, not a bool
    assert upload.headers["content-type"].startswith("multipart/form-data")
    assert upload.form["file"]["content_type"] == "audio/mpeg"  # not storage3's text/plain default
    assert upload.form["file"]["size"] == 200_000 and upload.form["cacheControl"] == "31536000"
    assert server.calls("POST", "/storage/v1/object/list/audio-private")  # size checked after upload
    (sign,) = server.calls("POST", "/storage/v1/object/sign/")
    assert sign.json == {"expiresIn": "900", "download": key.rsplit("/", 1)[-1]}
    assert stored.url_kind == "signed" and stored.bucket == "audio-private" and stored.expires_at
    assert "token=" in stored.url and "download=" in stored.url
    data, headers = _get(stored.url)
    assert hashlib.sha256(data).hexdigest() == digest
    assert headers["Content-Type"] == "audio/mpeg"  # type: ignore[index]
    assert key.rsplit("/", 1)[-1] in headers["Content-Disposition"]  # type: ignore[index]
    assert progress[-1] == 1.0 and progress == sorted(progress)
    assert KEY not in repr(stored) and stored.url not in repr(stored)


def test_public_upload_is_reachable_at_its_public_url(server: SupabaseStorageServer, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "a.wav", 50_000)
    stored = _storage(server).put(path, render_key("job-2", digest, "wav"), content_type="audio/wav", public=True,
                                  sha256=digest)
    assert server.buckets["audio-public"]["public"] is True
    assert stored.url == f"{server.url}/storage/v1/object/public/audio-public/{stored.key}"
    assert stored.url_kind == "public" and stored.expires_at is None
    data, headers = _get(stored.url)
    assert hashlib.sha256(data).hexdigest() == digest and headers["Content-Type"] == "audio/wav"  # type: ignore[index]


def test_503_twice_then_success(server: SupabaseStorageServer, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "a.mp3", 10_000)
    server.fail("POST", "/storage/v1/object/audio-private/", 503, count=2, error="ServiceUnavailable")
    stored = _storage(server).put(path, render_key("job-3", digest, "mp3"), content_type="audio/mpeg", public=False,
                                  sha256=digest)
    assert server.injected == 2 and len(server.calls("POST", "/storage/v1/object/audio-private/")) == 3
    assert hashlib.sha256(_get(stored.url)[0]).hexdigest() == digest


def test_413_fails_once_with_what_to_change(server: SupabaseStorageServer, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "a.mp3", 30_000)
    server.fail("POST", "/storage/v1/object/audio-private/", 413, count=5, error="Payload too large",
                message="The object exceeded the maximum allowed size")
    with pytest.raises(StorageBucketRejected, match=r"30000 bytes.*global file size limit") as info:
        _storage(server).put(path, render_key("job-4", digest, "mp3"), content_type="audio/mpeg", public=False,
                             sha256=digest)
    assert server.injected == 1  # permanent: never retried
    assert KEY not in str(info.value)


def test_bucket_file_size_limit_is_checked_before_uploading(server: SupabaseStorageServer, tmp_path: Path) -> None:
    server.buckets["audio-private"] = {"public": False, "file_size_limit": 10_000}
    path, digest = _file(tmp_path / "a.mp3", 12_345)
    with pytest.raises(StorageBucketRejected, match=r"12345 bytes .* at most 10000 bytes.*raise the file size limit"):
        _storage(server).put(path, render_key("job-5", digest, "mp3"), content_type="audio/mpeg", public=False,
                             sha256=digest)
    assert not server.calls("POST", "/storage/v1/object/")


def test_bad_key_is_permanent_and_names_the_setting(server: SupabaseStorageServer, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "a.mp3", 100)
    with pytest.raises(StorageBucketRejected, match="SUPABASE_SERVICE_KEY") as info:
        _storage(server, service_key=SecretStr("wrong-key-value")).put(
            path, render_key("job-6", digest, "mp3"), content_type="audio/mpeg", public=False, sha256=digest)
    assert "wrong-key-value" not in str(info.value)
    assert len(server.requests) == 1


def test_private_bucket_used_as_public_is_refused(server: SupabaseStorageServer, tmp_path: Path) -> None:
    server.buckets["audio-public"] = {"public": False, "file_size_limit": None}
    path, digest = _file(tmp_path / "a.mp3", 100)
    with pytest.raises(StorageBucketRejected, match="PUBLIC_BUCKET"):
        _storage(server).put(path, render_key("job-7", digest, "mp3"), content_type="audio/mpeg", public=True,
                             sha256=digest)


def test_fallback_bucket_takes_a_refused_upload(server: SupabaseStorageServer, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "a.mp3", 1000)
    server.fail("POST", "/storage/v1/object/audio-private/", 403, count=1, error="Unauthorized",
                message="new row violates row-level security policy")
    stored = _storage(server, fallback_bucket="audio-fallback").put(
        path, render_key("job-8", digest, "mp3"), content_type="audio/mpeg", public=False, sha256=digest)
    assert stored.bucket == "audio-fallback" and stored.fallback_from == "audio-private"
    assert "row-level security" in (stored.fallback_reason or "")
    assert hashlib.sha256(_get(stored.url)[0]).hexdigest() == digest


def test_large_file_goes_through_tus_streamed_and_resumes(server: SupabaseStorageServer, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "big.wav", 20 * MIB + 123)
    storage = _storage(server)
    storage.client()
    server.fail("PATCH", "/storage/v1/upload/resumable/", 503, count=1)
    progress: list[float] = []
    tracemalloc.start()
    try:
        stored = storage.put(path, render_key("job-9", digest, "wav"), content_type="audio/wav", public=False,
                             sha256=digest, on_progress=progress.append)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB, f"peak traced memory {peak / MIB:.1f} MiB"  # never the 20 MiB file, not even a chunk
    (create,) = server.calls("POST", "/storage/v1/upload/resumable")
    assert create.json == {"bucketName": "audio-private", "objectName": stored.key, "contentType": "audio/wav",
                           "cacheControl": "31536000"}
    assert create.headers["x-upsert"] == "true" and create.headers["tus-resumable"] == "1.0.0"
    assert create.headers["upload-length"] == str(20 * MIB + 123)
    assert create.headers["authorization"] == f"Bearer {KEY}"
    patches = server.calls("PATCH", "/storage/v1/upload/resumable/")
    assert len(patches) == 5  # 4 chunks (6+6+6+2 MiB) + the one answered 503
    assert all(p.headers["content-length"] == str(6 * MIB) for p in patches[:-1])
    assert server.calls("HEAD", "/storage/v1/upload/resumable/")  # resumed from the server's offset
    assert not server.calls("POST", "/storage/v1/object/audio-private/")
    assert progress[-1] == 1.0
    data, _ = _get(stored.url)
    assert len(data) == 20 * MIB + 123 and hashlib.sha256(data).hexdigest() == digest


def test_signed_url_is_not_fetchable_without_its_token(server: SupabaseStorageServer, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "a.mp3", 100)
    stored = _storage(server).put(path, render_key("job-10", digest, "mp3"), content_type="audio/mpeg",
                                  public=False, sha256=digest)
    with pytest.raises(urllib.error.HTTPError):
        _get(stored.url.split("?", 1)[0])
    with pytest.raises(urllib.error.HTTPError):
        _get(f"{server.url}/storage/v1/object/public/audio-private/{stored.key}")
