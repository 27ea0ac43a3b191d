"""Supabase Storage: public and private buckets with the ``supabase`` SDK's storage client (storage3).

storage3 and httpx are imported lazily, here only. What this adapter handles that the SDK leaves to callers:

- content type: storage3 defaults to ``text/plain``; the file's audio type is always sent;
- ``x-upsert`` must be the *string* ``"true"`` (keys are content-addressed, so an upsert rewrites the same
  bytes and a retried upload never fails as a duplicate);
- timeout: storage3's default is 20 s; the httpx client gets STORAGE_TIMEOUT_S;
- errors: ``StorageApiError`` carries the real status in the body (``statusCode``, often a string, and a
  missing bucket comes back as HTTP 400 with ``"404"`` inside); translated into StorageError / StorageRejected;
- files above SUPABASE_TUS_THRESHOLD_MB (6 MB, Supabase's advice for standard uploads) go through the
  resumable (TUS 1.0.0) endpoint ``/storage/v1/upload/resumable`` in 6 MiB chunks streamed from disk,
  resuming from the server's offset after a transient failure.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from mindscript.errors import AssetNotFound, AssetTooLarge, StorageBucketRejected, StorageError, StorageRejected
from mindscript.redact import redact, scrub
from mindscript.storage.base import (
    ProgressCallback,
    RetryPolicy,
    StoredObject,
    check_object_key,
    file_size,
    human_bytes,
    is_transient_status,
    report,
    with_fallback,
    write_capped,
)

log = logging.getLogger(__name__)

TUS_CHUNK = 6 * 1024 * 1024  # Supabase requires 6 MiB chunks (the last one may be shorter)
_STREAM_PIECE = 256 * 1024


@dataclass(frozen=True)
class SupabaseConfig:
    url: str
    service_key: SecretStr
    public_bucket: str
    private_bucket: str
    signed_url_ttl: int = 3600
    fallback_bucket: str | None = None
    timeout_s: float = 120.0
    create_buckets: bool = True
    tus_threshold_bytes: int = 6 * 1024 * 1024
    tus_chunk_bytes: int = TUS_CHUNK
    cache_control_s: int = 31536000  # keys never change content: cache for a year


@dataclass
class _BucketInfo:
    public: bool
    file_size_limit: int | None


class SupabaseStorage:
    name = "supabase"

    def __init__(self, config: SupabaseConfig, retry: RetryPolicy | None = None) -> None:
        self.config = config
        self.retry = retry or RetryPolicy()
        self.base = config.url.rstrip("/") + "/storage/v1"
        self._client: Any = None
        self._http: Any = None
        self._lock = threading.Lock()
        self._buckets: dict[str, _BucketInfo] = {}

    # -- clients -----------------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        key = self.config.service_key.get_secret_value()
        return {"apikey": key, "Authorization": f"Bearer {key}"}

    def client(self) -> Any:
        """The SDK's storage client, on an httpx client with our timeout (storage3 would use 20 s)."""
        with self._lock:
            if self._client is None:
                import httpx
                from storage3 import SyncStorageClient

                timeout = httpx.Timeout(self.config.timeout_s, connect=min(30.0, self.config.timeout_s))
                self._http = httpx.Client(timeout=timeout, follow_redirects=False)
                self._client = SyncStorageClient(self.base + "/", self._headers(), http_client=self._http)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
            self._http = self._client = None

    # -- Storage -------------------------------------------------------------------------------------------
    def put(self, path: Path, key: str, *, content_type: str, public: bool, sha256: str,
            on_progress: ProgressCallback | None = None) -> StoredObject:
        bucket = self.config.public_bucket if public else self.config.private_bucket
        try:
            return with_fallback(
                lambda b: self._put_to(b, Path(path), key, content_type=content_type, public=public, sha256=sha256,
                                       on_progress=on_progress),
                bucket, self.config.fallback_bucket)
        finally:
            self.close()  # one put per task: do not leave pooled sockets to the garbage collector

    def _put_to(self, bucket: str, path: Path, key: str, *, content_type: str, public: bool, sha256: str,
                on_progress: ProgressCallback | None) -> StoredObject:
        size = file_size(path)
        info = self.retry.run(lambda: self._ensure_bucket(bucket, public), what=f"checking bucket {bucket!r}")
        if info.file_size_limit and size > info.file_size_limit:
            raise StorageBucketRejected(_too_large(bucket, size, info.file_size_limit))
        what = f"uploading {key!r} ({human_bytes(size)}) to bucket {bucket!r}"
        if size > self.config.tus_threshold_bytes:
            self._tus_upload(bucket, path, key, size, content_type, on_progress, what=what)
        else:
            self.retry.run(lambda: self._standard_upload(bucket, path, key, size, content_type, on_progress),
                           what=what)
        report(on_progress, 1.0)
        stored = self.retry.run(lambda: self._stored_size(bucket, key), what=f"checking {key!r} after upload")
        if stored != size:
            raise StorageError(f"bucket {bucket!r} holds {stored} bytes for {key!r}, the local file has {size}")
        url, kind, expires = self.retry.run(lambda: self._url(bucket, key, public), what=f"URL for {key!r}")
        return StoredObject(backend=self.name, bucket=bucket, key=key, url=url, url_kind=kind, size=size,
                            sha256=sha256, expires_at=expires, content_type=content_type)

    # -- StorageReader -----------------------------------------------------------------------------------
    def download(self, key: str, dest: Path, *, bucket: str | None = None, max_bytes: int,
                 timeout_s: float) -> int:
        """Stream ``key`` of ``bucket`` (PRIVATE_BUCKET when None) to ``dest`` with the service key.

        ``GET /storage/v1/object/{bucket}/{key}`` (the route storage3's ``download`` uses, which would read the
        whole object into memory), streamed in 256 KiB pieces; ``timeout_s`` on connect and every read;
        redirects are not followed (the service key must not leave SUPABASE_URL's origin).
        """
        import httpx

        check_object_key(key)
        bucket = bucket or self.config.private_bucket
        url = f"{self.base}/object/{urllib.parse.quote(bucket, safe='')}/{urllib.parse.quote(key, safe='/')}"
        what = f"downloading {key!r} from bucket {bucket!r}"

        def once(http: Any) -> int:
            try:
                with http.stream("GET", url, headers=self._headers()) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        status = _body_status(resp)
                        if status == 404:
                            raise AssetNotFound(f"storage key {key!r} not found in bucket {bucket!r}")
                        raise self._http_error(status, _body_message(resp), what=what, bucket=bucket,
                                               hint=f"check that bucket {bucket!r} exists and SUPABASE_SERVICE_KEY "
                                                    "may read it")
                    declared = resp.headers.get("Content-Length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise AssetTooLarge(f"storage key {key!r} in bucket {bucket!r} is {declared} bytes, over "
                                            f"the {max_bytes}-byte limit")
                    return write_capped(resp.iter_bytes(_STREAM_PIECE), dest, max_bytes=max_bytes,
                                        what=f"storage key {key!r} in bucket {bucket!r}")
            except httpx.TransportError as exc:  # connect/read timeouts, resets mid-body: worth another try
                raise StorageError(f"{what}: {type(exc).__name__}") from exc

        timeout = httpx.Timeout(timeout_s, connect=min(30.0, timeout_s))
        with httpx.Client(timeout=timeout, follow_redirects=False) as http:
            return self.retry.run(lambda: once(http), what=what)

    # -- buckets -------------------------------------------------------------------------------------------
    def _ensure_bucket(self, bucket: str, public: bool) -> _BucketInfo:
        if bucket in self._buckets:
            return self._buckets[bucket]
        from storage3.exceptions import StorageApiError

        client = self.client()
        try:
            found = client.get_bucket(bucket)
            info = _BucketInfo(bool(found.public), found.file_size_limit)
        except StorageApiError as exc:
            if _status(exc) != 404:
                raise self._translate(exc, what=f"reading bucket {bucket!r}", bucket=bucket) from exc
            if not self.config.create_buckets:
                raise StorageBucketRejected(f"bucket {bucket!r} does not exist; create it (public={public}) or set "
                                            "STORAGE_CREATE_BUCKETS=true") from exc
            try:
                client.create_bucket(bucket, options={"public": public})
            except StorageApiError as create_exc:
                if _status(create_exc) != 409:  # created meanwhile by another worker: fine
                    raise self._translate(create_exc, what=f"creating missing bucket {bucket!r}", bucket=bucket,
                                          hint=f"create bucket {bucket!r} (public={public}) in the dashboard, or "
                                               "use the service_role key") from create_exc
            log.info("created %s bucket %r", "public" if public else "private", bucket)
            info = _BucketInfo(public, None)
        except Exception as exc:  # noqa: BLE001 - transport errors
            raise self._translate(exc, what=f"reading bucket {bucket!r}", bucket=bucket) from exc
        if public and not info.public:
            raise StorageBucketRejected(
                f"bucket {bucket!r} is private, so public URLs into it would not open: make it public in the "
                f"Supabase dashboard or set PUBLIC_BUCKET to a public bucket")
        if not public and info.public:
            log.warning("PRIVATE_BUCKET %r is public: signed URLs work, but so does the public URL", bucket)
        self._buckets[bucket] = info
        return info

    # -- uploads -------------------------------------------------------------------------------------------
    def _standard_upload(self, bucket: str, path: Path, key: str, size: int, content_type: str,
                         on_progress: ProgressCallback | None) -> None:
        with open(path, "rb", buffering=0) as raw, _ProgressReader(raw, size, on_progress) as reader:
            try:
                self.client().from_(bucket).upload(key, reader, {
                    "content-type": content_type, "cache-control": str(self.config.cache_control_s),
                    "upsert": "true"})
            except Exception as exc:  # noqa: BLE001
                raise self._translate(exc, what=f"uploading {key!r} ({human_bytes(size)}) to bucket {bucket!r}",
                                      bucket=bucket, size=size) from exc

    def _tus_upload(self, bucket: str, path: Path, key: str, size: int, content_type: str,
                    on_progress: ProgressCallback | None, *, what: str) -> None:
        """TUS 1.0.0 against /storage/v1/upload/resumable, streamed from disk one chunk at a time."""
        self.client()
        meta = {"bucketName": bucket, "objectName": key, "contentType": content_type,
                "cacheControl": str(self.config.cache_control_s)}
        upload_meta = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())
        location = self.retry.run(lambda: self._tus_create(size, upload_meta, bucket, what), what=what)
        state = {"offset": 0}  # where the server is; a retry resyncs it with HEAD first

        def resync() -> None:
            state["offset"] = self.retry.run(lambda: self._tus_offset(location, bucket, what),
                                             what=f"{what} (resume)")

        with open(path, "rb", buffering=0) as f:

            def send() -> int:
                start = state["offset"]
                return self._tus_patch(location, f, start, min(self.config.tus_chunk_bytes, size - start), bucket,
                                       what, size)

            while state["offset"] < size:
                state["offset"] = self.retry.run(send, what=f"{what} (chunk at byte {state['offset']})",
                                                 before_retry=resync)
                report(on_progress, state["offset"] / size)

    def _tus_request(self, method: str, url: str, headers: dict[str, str], what: str, bucket: str,
                     size: int | None = None, content: Any = None) -> Any:
        import httpx

        try:
            resp = self._http.request(method, url, headers={**self._headers(), "Tus-Resumable": "1.0.0", **headers},
                                      content=content)
        except httpx.TransportError as exc:
            raise StorageError(f"{what}: {type(exc).__name__}") from exc
        if resp.status_code >= 400:
            raise self._http_error(resp.status_code, _body_message(resp), what=what, bucket=bucket, size=size)
        return resp

    def _tus_create(self, size: int, upload_meta: str, bucket: str, what: str) -> str:
        resp = self._tus_request("POST", f"{self.base}/upload/resumable",
                                 {"Upload-Length": str(size), "Upload-Metadata": upload_meta, "x-upsert": "true",
                                  "Content-Length": "0"}, what, bucket, size)
        location = resp.headers.get("Location")
        if not location:
            raise StorageError(f"{what}: the resumable endpoint answered {resp.status_code} without a Location")
        absolute = urllib.parse.urljoin(f"{self.base}/upload/resumable", location)
        # The service key travels with every PATCH: never send it anywhere but SUPABASE_URL's origin.
        if _origin(absolute) != _origin(self.base):
            raise StorageRejected(f"{what}: the resumable endpoint sent the upload to another origin "
                                  f"({_origin(absolute)!r}); expected {_origin(self.base)!r} (SUPABASE_URL)")
        return absolute

    def _tus_offset(self, location: str, bucket: str, what: str) -> int:
        resp = self._tus_request("HEAD", location, {}, what, bucket)
        return int(resp.headers.get("Upload-Offset", "0"))

    def _tus_patch(self, location: str, f: Any, offset: int, length: int, bucket: str, what: str, size: int) -> int:
        def body() -> Iterator[bytes]:
            f.seek(offset)
            left = length
            while left > 0:
                piece = f.read(min(_STREAM_PIECE, left))
                if not piece:
                    raise StorageRejected(f"{what}: the local file shrank while uploading")
                left -= len(piece)
                yield piece

        resp = self._tus_request("PATCH", location, {"Upload-Offset": str(offset), "Content-Length": str(length),
                                                     "Content-Type": "application/offset+octet-stream"},
                                 what, bucket, size, content=body())
        new_offset = int(resp.headers.get("Upload-Offset", offset + length))
        if new_offset != offset + length:
            raise StorageError(f"{what}: server accepted up to byte {new_offset}, expected {offset + length}")
        return new_offset

    # -- after upload --------------------------------------------------------------------------------------
    def _stored_size(self, bucket: str, key: str) -> int:
        folder, _, name = key.rpartition("/")
        try:
            items = self.client().from_(bucket).list(folder, {"search": name, "limit": 100})
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, what=f"listing {folder!r} in bucket {bucket!r}", bucket=bucket) from exc
        for item in items:
            if item.get("name") == name:
                return int((item.get("metadata") or {}).get("size", -1))
        raise StorageError(f"{key!r} is not listed in bucket {bucket!r} after upload")

    def _url(self, bucket: str, key: str, public: bool) -> tuple[str, str, str | None]:
        files = self.client().from_(bucket)
        if public:
            return files.get_public_url(key), "public", None
        ttl = self.config.signed_url_ttl
        try:
            signed = files.create_signed_url(key, ttl, {"download": key.rsplit("/", 1)[-1]})
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, what=f"signing a URL for {key!r}", bucket=bucket) from exc
        url = signed.get("signedURL") or signed.get("signedUrl")
        if not url:
            raise StorageError(f"signing a URL for {key!r} in bucket {bucket!r} returned none")
        expires = (datetime.now(UTC) + timedelta(seconds=ttl)).isoformat(timespec="seconds")
        return str(url), "signed", expires

    # -- errors --------------------------------------------------------------------------------------------
    def _translate(self, exc: BaseException, *, what: str, bucket: str, size: int | None = None,
                   hint: str | None = None) -> Exception:
        import httpx
        from storage3.exceptions import StorageApiError

        scrub(exc, [self.config.service_key.get_secret_value()])  # it stays the cause: printed in tracebacks
        if isinstance(exc, StorageApiError):
            status = _status(exc)
            message = f"{exc.code}: {exc.message}" if exc.code and exc.code != "InternalError" else str(exc.message)
            return self._http_error(status, message[:300], what=what, bucket=bucket, size=size, hint=hint)
        if isinstance(exc, httpx.TransportError):
            return StorageError(f"{what}: {type(exc).__name__}")
        return StorageRejected(redact(f"{what}: unexpected {type(exc).__name__}: {exc}",
                                      [self.config.service_key.get_secret_value()]))

    def _http_error(self, status: int | None, message: str, *, what: str, bucket: str, size: int | None = None,
                    hint: str | None = None) -> Exception:
        # the vendor's words, minus the service key should a proxy echo it
        message = redact(message, [self.config.service_key.get_secret_value()])
        detail = f"{what}: HTTP {status if status is not None else '?'} {message}".rstrip()
        if status is None or is_transient_status(status):
            return StorageError(detail)
        if status == 413 or "maximum allowed size" in message:
            limit = self._bucket_limit(bucket)
            return StorageBucketRejected(_too_large(bucket, size, limit, detail=detail))
        if status in (401, 403):
            return StorageBucketRejected(f"{detail}; {hint or 'check SUPABASE_SERVICE_KEY (the service_role key) '}"
                                         f"{'' if hint else f'and the policies of bucket {bucket!r}'}")
        if status == 404:
            return StorageBucketRejected(f"{detail}; {hint or f'check that bucket {bucket!r} exists'}")
        return StorageRejected(f"{detail}{'; ' + hint if hint else ''}")

    def _bucket_limit(self, bucket: str) -> int | None:
        """The bucket's own file size limit, for the message (best effort: None when it cannot be read)."""
        try:
            return self.client().get_bucket(bucket).file_size_limit
        except Exception:  # noqa: BLE001
            return None


class _ProgressReader(io.BufferedReader):
    """A file object storage3 accepts (a BufferedReader), reporting how much httpx has read of it."""

    def __init__(self, raw: Any, size: int, on_progress: ProgressCallback | None) -> None:
        super().__init__(raw, buffer_size=_STREAM_PIECE)
        self._size, self._done, self._on_progress = size, 0, on_progress

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self._done += len(data)
        report(self._on_progress, self._done / self._size if self._size else 1.0)
        return data

    def __exit__(self, *args: object) -> None:
        self.detach()  # the raw file is closed by its own with-block


def _status(exc: Any) -> int | None:
    try:
        return int(str(exc.status))
    except (TypeError, ValueError):
        return None


def _body_status(resp: Any) -> int:
    """storage-api puts the real status in the body (``"statusCode": "404"`` in an HTTP 400 answer)."""
    try:
        body = resp.json()
        if isinstance(body, dict) and str(body.get("statusCode", "")).isdigit():
            return int(body["statusCode"])
    except ValueError:
        pass
    return int(resp.status_code)


def _body_message(resp: Any) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict):
            return str(body.get("message") or body.get("error") or "")[:300]
    except ValueError:
        pass
    return resp.text[:300].strip()


def _origin(url: str) -> str:
    p = urllib.parse.urlsplit(url)
    return f"{p.scheme}://{p.netloc}".lower()


def _too_large(bucket: str, size: int | None, limit: int | None, *, detail: str | None = None) -> str:
    file_text = f"the file is {size} bytes ({human_bytes(size)})" if size is not None else "the file is too large"
    if limit:
        where = f"bucket {bucket!r} accepts at most {limit} bytes ({human_bytes(limit)})"
        fix = f"raise the file size limit of bucket {bucket!r}"
    else:
        where = f"bucket {bucket!r} has no limit of its own, so the project's global file size limit applies"
        fix = "raise the global file size limit (Storage settings)"
    head = f"{detail}; " if detail else ""
    return f"{head}{file_text} but {where}: {fix}, or use a smaller format/bitrate"
