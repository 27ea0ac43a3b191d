"""A full render stored on an S3-protocol server (moto, loopback): the returned URL works over HTTP."""

from __future__ import annotations

import copy
import hashlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows import render as render_flow
from mindscript.job import RenderJob, parse_job
from mindscript.progress import ProgressEvent, Stage
from mindscript.settings import get_settings
from mindscript.storage.base import StoredObject
from tests.conftest import ROOT
from tests.servers.process import server_process

SAMPLE = json.loads((ROOT / "examples" / "jobs" / "sample.json").read_text())


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with server_process("tests.servers.storage_s3") as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def s3_env(worker_env: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("STORAGE_BACKEND", "s3")
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "flow-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "flow-test-secret")
    monkeypatch.setenv("PRIVATE_BUCKET", "flow-private")
    monkeypatch.setenv("PUBLIC_BUCKET", "flow-public")
    monkeypatch.setenv("STORAGE_RETRY_DELAY_S", "0.01")
    get_settings.cache_clear()
    yield s3_endpoint
    get_settings.cache_clear()


def _job(location: str) -> dict:
    job = copy.deepcopy(SAMPLE)
    job["id"] = f"s3-flow-{location}"
    project = job["payload"]["projectData"]
    project["durationMin"] = 0.5
    project["layers"]["background"] = {"enabled": False}
    project["layers"]["voice"] = {"enabled": False}  # tones only: this test is about where the file goes
    job["payload"]["outputOptions"]["storageLocation"] = location
    return job


def _fetch(url: str) -> tuple[str, int]:
    with urllib.request.urlopen(url, timeout=60) as resp:
        data = resp.read()
    return hashlib.sha256(data).hexdigest(), len(data)


@pytest.mark.parametrize("location", ["private", "public"])
def test_render_with_s3_storage_returns_a_working_url(s3_env: str, location: str) -> None:
    events: list[ProgressEvent] = []
    render_flow.EXTRA_SINKS.append(events.append)
    try:
        result = render_flow.render_job(parse_job(_job(location)))
    finally:
        render_flow.EXTRA_SINKS.remove(events.append)
    assert result["success"] is True
    data = result["data"]
    meta = data["metadata"]
    assert _fetch(data["outputUrl"]) == (meta["sha256"], meta["sizeBytes"])
    storage = meta["storage"]
    assert storage["backend"] == "s3" and storage["key"] == data["storagePath"]
    assert storage["sha256"] == meta["sha256"] and storage["sizeBytes"] == meta["sizeBytes"]
    assert storage["contentType"] == "audio/mpeg" and storage["fallbackFrom"] is None
    if location == "private":
        assert storage["bucket"] == "flow-private" and storage["urlKind"] == "signed" and storage["expiresAt"]
        assert "X-Amz-Signature=" in data["outputUrl"]
    else:
        assert storage["bucket"] == "flow-public" and storage["urlKind"] == "public" and storage["expiresAt"] is None
        assert data["outputUrl"] == f"{s3_env}/flow-public/{data['storagePath']}"
    uploads = [e for e in events if e.stage == Stage.UPLOADING and e.kind == "progress"]
    assert uploads and uploads[-1].stage_fraction == 1.0 and "Uploading to s3 storage" in uploads[-1].message
    assert "flow-test-secret" not in json.dumps(result)


def test_s3_block_supplies_credentials_and_bucket(s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from tasks.render import store_output

    S3Bucket(bucket_name="block-bucket", credentials=AwsCredentials(
        aws_access_key_id="block-key", aws_secret_access_key="block-secret", region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=s3_env))).save("render-output", overwrite=True)
    for var in ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PRIVATE_BUCKET", "PUBLIC_BUCKET"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("S3_BLOCK", "render-output")
    get_settings.cache_clear()
    src = tmp_path / "master.mp3"
    src.write_bytes(b"ID3" + bytes(range(256)) * 40)
    @flow
    def store_only(job: RenderJob, path: str) -> StoredObject:
        return store_output(job, path)

    stored = store_only(parse_job(_job("private")), str(src))
    assert stored.bucket == "block-bucket" and stored.url.startswith(s3_env)
    assert "X-Amz-Credential=block-key" in stored.url
    assert _fetch(stored.url) == (hashlib.sha256(src.read_bytes()).hexdigest(), src.stat().st_size)
