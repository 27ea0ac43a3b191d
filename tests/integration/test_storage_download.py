"""The storage read side (uploaded recordings): every backend streams an object to a file with a size cap and a
timeout, refuses keys outside the configured prefix, and retries transient failures; S3 over moto's S3 server,
Supabase over the Storage API test server, local on disk."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from mindscript.errors import AssetNotFound, AssetTooLarge, StorageError, StorageRejected
from mindscript.storage.base import RetryPolicy, check_object_key
from mindscript.storage.local import LocalStorage
from mindscript.storage.s3 import S3Config, S3Storage
from mindscript.storage.supabase import SupabaseConfig, SupabaseStorage
from tests.servers.process import server_process
from tests.servers.storage_supabase import SupabaseStorageServer

MIB = 1 << 20
KEY = "service-role-key-for-download-tests"
UNSAFE_KEYS = ["uploads/../renders/x.wav", "uploads/./x.wav", "uploads//x.wav", "/uploads/x.wav", "uploads\\x.wav",
               "uploads/%2e%2e/renders/x.wav", "uploads/%252e%252e/x.wav", "uploads/x\x00.wav", "C:/x.wav", "",
               "renders/2026/01/01/job/abc.mp3", "uploads-other/x.wav", "uploads"]


# -- keys ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_unsafe_or_outside_keys_are_refused(key: str) -> None:
    with pytest.raises(StorageRejected):
        check_object_key(key, "uploads/")


def test_plain_keys_under_the_prefix_pass() -> None:
    assert check_object_key("uploads/user-1/take 1.m4a", "uploads/") == "uploads/user-1/take 1.m4a"
    assert check_object_key("anything/x.wav") == "anything/x.wav"  # no prefix: anywhere in the bucket


# -- local ---------------------------------------------------------------------------------------------------
def test_local_download_copies_caps_and_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "out"
    (root / "uploads").mkdir(parents=True)
    data = os.urandom(300_000)
    (root / "uploads" / "take.wav").write_bytes(data)
    (tmp_path / "secret.wav").write_bytes(b"outside")
    (root / "uploads" / "link.wav").symlink_to(tmp_path / "secret.wav")
    storage = LocalStorage(root)
    dest = tmp_path / "got.wav"
    assert storage.download("uploads/take.wav", dest, bucket=None, max_bytes=MIB, timeout_s=5) == len(data)
    assert dest.read_bytes() == data
    with pytest.raises(AssetTooLarge, match="300000 bytes"):
        storage.download("uploads/take.wav", tmp_path / "big.wav", bucket=None, max_bytes=1000, timeout_s=5)
    assert not (tmp_path / "big.wav").exists()
    with pytest.raises(AssetNotFound):
        storage.download("uploads/none.wav", tmp_path / "n.wav", bucket=None, max_bytes=MIB, timeout_s=5)
    with pytest.raises(StorageRejected):  # a symlink out of STORAGE_DIR
        storage.download("uploads/link.wav", tmp_path / "l.wav", bucket=None, max_bytes=MIB, timeout_s=5)
    with pytest.raises(StorageRejected):
        storage.download("uploads/../../secret.wav", tmp_path / "t.wav", bucket=None, max_bytes=MIB, timeout_s=5)


# -- a server that accepts and never answers ----------------------------------------------------------------
@pytest.fixture
def silent_server() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                held.append(conn)  # read nothing, answer nothing
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    sock.close()


# -- S3 (moto server) ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with server_process("tests.servers.storage_s3") as port:
        yield f"http://127.0.0.1:{port}"


def _s3(endpoint: str, **changes: object) -> S3Storage:
    config = dict(public_bucket="dl-public", private_bucket="dl-private", endpoint_url=endpoint,
                  access_key_id="test-key-id", secret_access_key=SecretStr("test-secret-value"), timeout_s=30.0)
    config.update(changes)
    return S3Storage(S3Config(**config), RetryPolicy(retries=3, base_delay_s=0.01))  # type: ignore[arg-type]


def _faults(endpoint: str, **spec: object) -> None:
    req = urllib.request.Request(f"{endpoint}/_faults", data=json.dumps(spec).encode(), method="POST")
    urllib.request.urlopen(req).read()


def _requests(endpoint: str) -> list[list[str]]:
    return json.loads(urllib.request.urlopen(f"{endpoint}/_faults").read())["requests"]


def _put_object(storage: S3Storage, bucket: str, key: str, data: bytes) -> None:
    s3 = storage.client()
    try:
        s3.create_bucket(Bucket=bucket)
    except Exception as exc:  # noqa: BLE001 - already there from an earlier test
        assert "BucketAlreadyOwnedByYou" in str(exc)
    s3.put_object(Bucket=bucket, Key=key, Body=data)


def test_s3_download_streams_with_bounded_memory(endpoint: str, tmp_path: Path) -> None:
    storage = _s3(endpoint)
    small, big = os.urandom(MIB), os.urandom(24 * MIB)
    _put_object(storage, "dl-private", "uploads/small.flac", small)
    _put_object(storage, "dl-private", "uploads/take.flac", big)
    storage._make_client(5.0).close()  # import botocore outside the measurement
    peaks = []
    for key, data in (("uploads/small.flac", small), ("uploads/take.flac", big)):
        dest = tmp_path / key.rsplit("/", 1)[1]
        tracemalloc.start()
        try:
            n = storage.download(key, dest, bucket=None, max_bytes=64 * MIB, timeout_s=30)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert n == len(data) and hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()
    # Each download builds its own client (~13 MiB of botocore models); what the object adds must stay small.
    assert peaks[1] - peaks[0] < 2 * MIB, f"peaks {[round(p / MIB, 1) for p in peaks]} MiB: not streamed"


def test_s3_download_from_the_recordings_bucket_cap_missing_and_retries(endpoint: str, tmp_path: Path) -> None:
    storage = _s3(endpoint)
    data = os.urandom(200_000)
    _put_object(storage, "dl-recordings", "uploads/a.wav", data)
    dest = tmp_path / "a.wav"
    with pytest.raises(AssetNotFound, match="dl-private"):  # not in the default (private) bucket
        storage.download("uploads/a.wav", dest, bucket=None, max_bytes=MIB, timeout_s=30)
    with pytest.raises(AssetTooLarge, match="200000 bytes"):
        storage.download("uploads/a.wav", dest, bucket="dl-recordings", max_bytes=100_000, timeout_s=30)
    assert not dest.exists()
    _faults(endpoint, method="GET", path="/dl-recordings/uploads/a.wav", status=503, code="SlowDown", count=2)
    before = len(_requests(endpoint))
    assert storage.download("uploads/a.wav", dest, bucket="dl-recordings", max_bytes=MIB, timeout_s=30) == len(data)
    gets = [r for r in _requests(endpoint)[before:] if r[0] == "GET" and r[1] == "/dl-recordings/uploads/a.wav"]
    assert len(gets) == 3 and dest.read_bytes() == data  # 503, 503, then the object


def test_s3_unsafe_key_is_never_requested(endpoint: str, tmp_path: Path) -> None:
    storage = _s3(endpoint)
    before = len(_requests(endpoint))
    for key in ("uploads/../renders/x.wav", "uploads/%2e%2e/renders/x.wav", "/etc/passwd"):
        with pytest.raises(StorageRejected):
            storage.download(key, tmp_path / "x.wav", bucket=None, max_bytes=MIB, timeout_s=30)
    assert len(_requests(endpoint)) == before


def test_s3_download_times_out(silent_server: str, tmp_path: Path) -> None:
    storage = S3Storage(S3Config(public_bucket="p-bucket", private_bucket="q-bucket", endpoint_url=silent_server,
                                 access_key_id="k", secret_access_key=SecretStr("s")),
                        RetryPolicy(retries=1, base_delay_s=0.01))
    started = time.monotonic()
    with pytest.raises(StorageError, match="Timeout"):
        storage.download("uploads/a.wav", tmp_path / "a.wav", bucket=None, max_bytes=MIB, timeout_s=0.5)
    assert time.monotonic() - started < 10  # 2 attempts x 0.5 s, not STORAGE_TIMEOUT_S
    assert not (tmp_path / "a.wav").exists()


# -- Supabase (Storage API server) ---------------------------------------------------------------------------
@pytest.fixture
def supabase(tmp_path: Path) -> Iterator[SupabaseStorageServer]:
    with SupabaseStorageServer(tmp_path / "server", KEY) as s:
        yield s


def _supabase(server: SupabaseStorageServer | str, **changes: object) -> SupabaseStorage:
    url = server if isinstance(server, str) else server.url
    config = dict(url=url, service_key=SecretStr(KEY), public_bucket="audio-public",
                  private_bucket="audio-private", timeout_s=30.0)
    config.update(changes)
    return SupabaseStorage(SupabaseConfig(**config), RetryPolicy(retries=3, base_delay_s=0.01))  # type: ignore[arg-type]


def test_supabase_download_with_the_service_key(supabase: SupabaseStorageServer, tmp_path: Path) -> None:
    storage = _supabase(supabase)
    src = tmp_path / "take.m4a"
    data = os.urandom(3 * MIB)
    src.write_bytes(data)
    storage.put(src, "uploads/user 1/take.m4a", content_type="audio/mp4", public=False,
                sha256=hashlib.sha256(data).hexdigest())
    dest = tmp_path / "got.m4a"
    assert storage.download("uploads/user 1/take.m4a", dest, bucket=None, max_bytes=8 * MIB, timeout_s=30) == len(data)
    assert dest.read_bytes() == data
    get = supabase.calls("GET", "/storage/v1/object/audio-private/")[-1]
    assert get.path == "/storage/v1/object/audio-private/uploads/user 1/take.m4a"
    assert get.headers["authorization"] == f"Bearer {KEY}" and get.headers["apikey"] == KEY

    supabase.fail("GET", "/storage/v1/object/audio-private/", 503, 2)
    dest.unlink()
    assert storage.download("uploads/user 1/take.m4a", dest, bucket=None, max_bytes=8 * MIB, timeout_s=30) == len(data)
    assert supabase.injected == 2 and dest.read_bytes() == data

    with pytest.raises(AssetTooLarge, match=str(len(data))):
        storage.download("uploads/user 1/take.m4a", tmp_path / "big", bucket=None, max_bytes=MIB, timeout_s=30)
    assert not (tmp_path / "big").exists()
    with pytest.raises(AssetNotFound, match="audio-private"):
        storage.download("uploads/none.m4a", tmp_path / "n", bucket=None, max_bytes=MIB, timeout_s=30)


def test_supabase_denied_and_unsafe_keys(supabase: SupabaseStorageServer, tmp_path: Path) -> None:
    wrong = _supabase(supabase, service_key=SecretStr("not-the-key"))
    with pytest.raises(StorageRejected, match="SUPABASE_SERVICE_KEY") as info:
        wrong.download("uploads/a.wav", tmp_path / "a", bucket="recordings", max_bytes=MIB, timeout_s=30)
    assert "not-the-key" not in str(info.value)
    before = len(supabase.requests)
    for key in ("uploads/../renders/x.wav", "uploads/%2E%2E/x.wav", "uploads//x.wav"):
        with pytest.raises(StorageRejected):
            _supabase(supabase).download(key, tmp_path / "x", bucket=None, max_bytes=MIB, timeout_s=30)
    assert len(supabase.requests) == before


def test_supabase_download_times_out(silent_server: str, tmp_path: Path) -> None:
    storage = SupabaseStorage(SupabaseConfig(url=silent_server, service_key=SecretStr(KEY), public_bucket="pub",
                                             private_bucket="priv"), RetryPolicy(retries=1, base_delay_s=0.01))
    started = time.monotonic()
    with pytest.raises(StorageError, match="Timeout"):
        storage.download("uploads/a.wav", tmp_path / "a.wav", bucket=None, max_bytes=MIB, timeout_s=0.5)
    assert time.monotonic() - started < 10
