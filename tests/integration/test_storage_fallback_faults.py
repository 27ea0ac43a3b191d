"""A transient failure while storing in UPLOAD_FALLBACK_BUCKET is retried, not mistaken for the first bucket's
refusal (found by the soak, bench/soak.py: a 500 on the fallback upload failed the job as "AccessDenied")."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from mindscript.errors import StorageBucketRejected
from mindscript.storage.base import RetryPolicy, render_key
from mindscript.storage.s3 import S3Config, S3Storage
from tests.servers.process import server_process


@pytest.fixture
def endpoint() -> Iterator[str]:
    with server_process("tests.servers.storage_s3") as port:
        yield f"http://127.0.0.1:{port}"


def _arm(endpoint: str, **spec: object) -> None:
    req = urllib.request.Request(f"{endpoint}/_faults", data=json.dumps(spec).encode(), method="POST")
    urllib.request.urlopen(req, timeout=10).read()


def _requests(endpoint: str) -> list[list[str]]:
    with urllib.request.urlopen(f"{endpoint}/_faults", timeout=10) as resp:
        return json.loads(resp.read())["requests"]


def _put(endpoint: str, tmp_path: Path) -> tuple[S3Storage, Path, str, str]:
    data = os.urandom(64 * 1024)
    path = tmp_path / "take.mp3"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    storage = S3Storage(S3Config(public_bucket="pub-a", private_bucket="priv-a", fallback_bucket="spare-b",
                                 endpoint_url=endpoint, access_key_id="test-key-id",
                                 secret_access_key=SecretStr("test-secret-value"), timeout_s=30.0),
                        RetryPolicy(retries=3, base_delay_s=0.01))
    return storage, path, digest, render_key("job-fallback", digest, "mp3")


@pytest.mark.parametrize("status,code", [(500, "InternalError"), (503, "SlowDown")])
def test_transient_error_on_the_fallback_upload_is_retried(endpoint: str, tmp_path: Path, status: int,
                                                           code: str) -> None:
    storage, path, digest, key = _put(endpoint, tmp_path)
    _arm(endpoint, method="PUT", path="/pub-a/", status=403, code="AccessDenied", count=100)
    _arm(endpoint, method="PUT", path="/spare-b/", status=status, code=code, count=1)

    stored = storage.put(path, key, content_type="audio/mpeg", public=True, sha256=digest)

    assert (stored.bucket, stored.key, stored.fallback_from) == ("spare-b", key, "pub-a")
    assert "AccessDenied" in (stored.fallback_reason or "")
    puts = [r for r in _requests(endpoint) if r[0] == "PUT" and r[1] == f"/spare-b/{key}"]
    assert len(puts) == 2  # the injected failure, then the retry that stored it


def test_a_fallback_bucket_that_refuses_too_names_its_own_error(endpoint: str, tmp_path: Path) -> None:
    storage, path, digest, key = _put(endpoint, tmp_path)
    _arm(endpoint, method="PUT", path="/pub-a/", status=403, code="AccessDenied", count=100)
    _arm(endpoint, method="PUT", path="/spare-b/", status=403, code="AllAccessDisabled", count=100)

    with pytest.raises(StorageBucketRejected) as info:
        storage.put(path, key, content_type="audio/mpeg", public=True, sha256=digest)

    first, _, second = info.value.message.partition("refused it too")
    assert "'pub-a'" in first and "AccessDenied" in first
    assert "'spare-b'" in second and "AllAccessDisabled" in second and "AccessDenied" not in second
