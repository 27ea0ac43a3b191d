"""S3 backend against moto's S3 in server mode on loopback (its own process), with injected faults."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from mindscript.errors import StorageBucketRejected, StorageError
from mindscript.storage.base import RetryPolicy, render_key
from mindscript.storage.s3 import S3Config, S3Storage
from tests.servers.process import server_process

MIB = 1 << 20


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with server_process("tests.servers.storage_s3") as port:
        yield f"http://127.0.0.1:{port}"


def _faults(endpoint: str, **spec: object) -> None:
    req = urllib.request.Request(f"{endpoint}/_faults", data=json.dumps(spec).encode(), method="POST")
    urllib.request.urlopen(req).read()


def _injected(endpoint: str) -> dict:
    return json.loads(urllib.request.urlopen(f"{endpoint}/_faults").read())


def _storage(endpoint: str, **changes: object) -> S3Storage:
    config = dict(public_bucket="pub-bucket", private_bucket="priv-bucket", endpoint_url=endpoint,
                  access_key_id="test-key-id", secret_access_key=SecretStr("test-secret-value"), chunk_bytes=5 * MIB,
                  max_concurrency=2, timeout_s=30.0)
    config.update(changes)
    return S3Storage(S3Config(**config), RetryPolicy(retries=5, base_delay_s=0.01))  # type: ignore[arg-type]


def _file(path: Path, size: int) -> tuple[Path, str]:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, MIB))
            f.write(block)
            h.update(block)
            left -= len(block)
    return path, h.hexdigest()


def _fetch_sha256(url: str) -> tuple[str, int, object]:
    h, n = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=60) as resp:
        while block := resp.read(MIB):
            h.update(block)
            n += len(block)
        return h.hexdigest(), n, resp.headers


def test_40mb_multipart_upload_bounded_memory_and_presigned_url(endpoint: str, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "big.wav", 40 * MIB)
    storage = _storage(endpoint)
    storage.client()  # build the client (and import botocore) outside the measurement
    progress: list[float] = []
    before = len(_injected(endpoint)["requests"])
    tracemalloc.start()
    try:
        stored = storage.put(path, render_key("job-big", digest, "wav"), content_type="audio/wav", public=False,
                             sha256=digest, on_progress=progress.append)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # parts of 5 MiB, 2 in flight: the client never holds more than a few parts, never the 40 MiB file
    assert peak < 20 * MIB, f"peak traced memory {peak / MIB:.1f} MiB"
    requests = _injected(endpoint)["requests"][before:]
    parts = [r for r in requests if r[0] == "PUT" and "partNumber=" in r[2]]
    assert len(parts) == 8  # 40 MiB / 5 MiB: multipart, not a single PUT
    assert any(r[0] == "HEAD" and r[1].endswith(stored.key) for r in requests)  # size checked after upload
    # reported from the caller's thread while the parts go up (polled), never backwards, ending at 1
    assert progress == sorted(progress) and progress[-1] == 1.0 and any(0 < f < 1 for f in progress)
    assert stored.url_kind == "signed" and stored.bucket == "priv-bucket" and stored.size == 40 * MIB
    assert stored.expires_at is not None and "X-Amz-Signature=" in stored.url
    got, n, headers = _fetch_sha256(stored.url)
    assert (got, n) == (digest, 40 * MIB)
    assert headers["Content-Type"] == "audio/wav"  # type: ignore[index]
    assert 'filename="' in headers["Content-Disposition"]  # type: ignore[index]
    # secrets never show up in what the caller may log
    assert "test-secret-value" not in repr(stored) and stored.url not in repr(stored)


def test_public_object_is_reachable_at_its_public_url(endpoint: str, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "small.mp3", 300_000)
    stored = _storage(endpoint).put(path, render_key("job-pub", digest, "mp3"), content_type="audio/mpeg",
                                    public=True, sha256=digest)
    assert stored.url == f"{endpoint}/pub-bucket/{stored.key}" and stored.url_kind == "public"
    assert stored.expires_at is None
    got, n, headers = _fetch_sha256(stored.url)  # plain GET, no signature
    assert (got, n) == (digest, 300_000) and headers["Content-Type"] == "audio/mpeg"  # type: ignore[index]
    # the private bucket is not readable without the signature
    private = _storage(endpoint).put(path, render_key("job-priv", digest, "mp3"), content_type="audio/mpeg",
                                     public=False, sha256=digest)
    with pytest.raises(urllib.error.HTTPError, match="403"):
        _fetch_sha256(private.url.split("?", 1)[0])
    assert _fetch_sha256(private.url)[0] == digest


def test_public_url_template(endpoint: str) -> None:
    storage = _storage(endpoint, public_url_template="https://cdn.example.test/{bucket}/{key}")
    assert storage.public_url("b", "renders/x y.mp3") == "https://cdn.example.test/b/renders/x%20y.mp3"


def test_two_injected_5xx_are_survived(endpoint: str, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "mid.mp3", 12 * MIB)
    start = _injected(endpoint)["injected"]
    _faults(endpoint, method="PUT", query="partNumber", status=503, count=2)
    stored = _storage(endpoint).put(path, render_key("job-5xx", digest, "mp3"), content_type="audio/mpeg",
                                    public=False, sha256=digest)
    assert _injected(endpoint)["injected"] - start == 2
    assert _fetch_sha256(stored.url)[:2] == (digest, 12 * MIB)


def test_transient_failures_give_up_after_the_retry_budget(endpoint: str, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "s.mp3", 1000)
    start = _injected(endpoint)["injected"]
    _faults(endpoint, method="PUT", path="/priv-bucket/renders", status=500, code="InternalError", count=6)
    with pytest.raises(StorageError, match="after 6 attempts") as info:
        _storage(endpoint).put(path, render_key("job-500", digest, "mp3"), content_type="audio/mpeg",
                               public=False, sha256=digest)
    assert _injected(endpoint)["injected"] - start == 6  # 1 try + 5 retries, never more
    assert "test-secret-value" not in str(info.value)


def test_entity_too_large_fails_at_once_with_what_to_change(endpoint: str, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "s.mp3", 2000)
    start = _injected(endpoint)["injected"]
    _faults(endpoint, method="PUT", path="/priv-bucket/renders", status=400, code="EntityTooLarge", count=3)
    with pytest.raises(StorageBucketRejected, match=r"EntityTooLarge.*the file is 2000 bytes.*size limit"):
        _storage(endpoint).put(path, render_key("job-413", digest, "mp3"), content_type="audio/mpeg",
                               public=False, sha256=digest)
    assert _injected(endpoint)["injected"] - start == 1  # permanent: never retried
    _faults(endpoint, reset=True)


def test_fallback_bucket_takes_a_refused_upload_once(endpoint: str, tmp_path: Path) -> None:
    path, digest = _file(tmp_path / "f.mp3", 5000)
    _faults(endpoint, method="PUT", path="/priv-bucket/renders/", status=403, code="AccessDenied", count=1)
    stored = _storage(endpoint, fallback_bucket="fallback-bucket").put(
        path, render_key("job-fb", digest, "mp3"), content_type="audio/mpeg", public=False, sha256=digest)
    assert stored.bucket == "fallback-bucket" and stored.fallback_from == "priv-bucket"
    assert "AccessDenied" in (stored.fallback_reason or "")
    assert _fetch_sha256(stored.url)[:2] == (digest, 5000)


def test_missing_credentials_is_permanent_and_says_what_to_set(endpoint: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from mindscript.errors import StorageRejected

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    path, digest = _file(tmp_path / "c.mp3", 100)
    with pytest.raises(StorageRejected, match="AWS_ACCESS_KEY_ID"):
        _storage(endpoint, access_key_id=None, secret_access_key=None).put(
            path, render_key("job-cred", digest, "mp3"), content_type="audio/mpeg", public=False, sha256=digest)
