"""S3-compatible storage (AWS S3, Cloudflare R2, MinIO, Supabase's S3 endpoint) with boto3.

boto3 is imported lazily, here only. Credentials come as plain values: from settings (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, or boto3's own chain when unset), or from a saved prefect-aws ``S3Bucket`` block that
``tasks/storage.py`` reads on the Prefect side (mindscript never imports prefect).

Large files go up by multipart straight from disk in ``S3_MULTIPART_CHUNK_MB`` parts, at most
``S3_MAX_CONCURRENCY`` in flight, so memory is bounded by part size x concurrency whatever the file size.
botocore's own retries are switched off: ``RetryPolicy`` is the one retry layer (see base.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from mindscript.errors import AssetNotFound, AssetTooLarge, StorageBucketRejected, StorageError, StorageRejected
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

_DOWNLOAD_PIECE = 256 * 1024

_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
                    "Throttling", "ThrottlingException", "TooManyRequests"}
_BUCKET_CODES = {"NoSuchBucket", "AccessDenied", "AllAccessDisabled", "InvalidBucketName", "EntityTooLarge",
                 "AccountProblem", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


@dataclass(frozen=True)
class S3Config:
    """Everything the adapter needs; secrets stay ``SecretStr`` until the client is built."""

    public_bucket: str
    private_bucket: str
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    signed_url_ttl: int = 3600
    public_url_template: str | None = None
    fallback_bucket: str | None = None
    chunk_bytes: int = 8 * 1024 * 1024
    max_concurrency: int = 4
    timeout_s: float = 120.0
    create_buckets: bool = True


class S3Storage:
    name = "s3"

    def __init__(self, config: S3Config, retry: RetryPolicy | None = None) -> None:
        self.config = config
        self.retry = retry or RetryPolicy()
        self._client: Any = None
        self._lock = threading.Lock()
        self._ready: set[str] = set()

    # -- client ----------------------------------------------------------------------------------------
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client(self.config.timeout_s)
            return self._client

    def _make_client(self, timeout_s: float) -> Any:
        import boto3
        from botocore.config import Config

        # botocore.auth logs each signature at DEBUG, beside the canonical request; for a presigned URL that
        # signature is the URL's bearer token, so DEBUG logs would hand out private renders. Never below INFO.
        auth_log = logging.getLogger("botocore.auth")
        if auth_log.getEffectiveLevel() < logging.INFO:
            auth_log.setLevel(logging.INFO)
        c = self.config
        return boto3.session.Session().client(
            "s3",
            endpoint_url=c.endpoint_url,
            region_name=c.region,
            aws_access_key_id=c.access_key_id,
            aws_secret_access_key=c.secret_access_key.get_secret_value() if c.secret_access_key else None,
            aws_session_token=c.session_token.get_secret_value() if c.session_token else None,
            config=Config(
                connect_timeout=min(30.0, timeout_s), read_timeout=timeout_s,
                retries={"total_max_attempts": 1},  # RetryPolicy is the one retry layer
                s3={"addressing_style": "path" if c.endpoint_url else "auto"},
                signature_version="s3v4",
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    # -- Storage -----------------------------------------------------------------------------------------
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

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None

    def _put_to(self, bucket: str, path: Path, key: str, *, content_type: str, public: bool, sha256: str,
                on_progress: ProgressCallback | None) -> StoredObject:
        size = file_size(path)
        self.retry.run(lambda: self._ensure_bucket(bucket), what=f"checking bucket {bucket!r}")
        self.retry.run(lambda: self._upload(bucket, path, key, size, content_type, sha256, on_progress),
                       what=f"uploading {key!r} to bucket {bucket!r}")
        report(on_progress, 1.0)
        url, kind, expires = self._url(bucket, key, public)
        return StoredObject(backend=self.name, bucket=bucket, key=key, url=url, url_kind=kind, size=size,
                            sha256=sha256, expires_at=expires, content_type=content_type)

    # -- StorageReader -----------------------------------------------------------------------------------
    def download(self, key: str, dest: Path, *, bucket: str | None = None, max_bytes: int,
                 timeout_s: float) -> int:
        """Stream ``key`` of ``bucket`` (PRIVATE_BUCKET when None) to ``dest``: GetObject read in 256 KiB pieces,
        ``timeout_s`` on connect and on every read, the declared ContentLength checked before any byte."""
        check_object_key(key)
        bucket = bucket or self.config.private_bucket
        s3 = self._make_client(timeout_s)  # this timeout, not STORAGE_TIMEOUT_S; closed below
        what = f"downloading {key!r} from bucket {bucket!r}"
        hint = f"check that bucket {bucket!r} exists and these credentials may read it (s3:GetObject)"

        def once() -> int:
            try:
                response = s3.get_object(Bucket=bucket, Key=key)
            except Exception as exc:  # noqa: BLE001
                _, code = _status_code(exc)
                if code in ("NoSuchKey", "404", "NotFound"):
                    raise AssetNotFound(f"storage key {key!r} not found in bucket {bucket!r}") from exc
                raise _translate(exc, what=what, bucket=bucket, hint=hint) from exc
            body = response["Body"]
            try:
                declared = int(response.get("ContentLength") or 0)
                if declared > max_bytes:
                    raise AssetTooLarge(f"storage key {key!r} in bucket {bucket!r} is {declared} bytes, over the "
                                        f"{max_bytes}-byte limit")
                return write_capped(body.iter_chunks(_DOWNLOAD_PIECE), dest, max_bytes=max_bytes,
                                    what=f"storage key {key!r} in bucket {bucket!r}")
            except (AssetTooLarge, AssetNotFound):
                raise
            except Exception as exc:  # noqa: BLE001 - a read timeout or reset mid-body: worth another try
                raise _translate(exc, what=what, bucket=bucket) from exc
            finally:
                body.close()

        try:
            return self.retry.run(once, what=what)
        finally:
            s3.close()

    # -- steps ---------------------------------------------------------------------------------------------
    def _ensure_bucket(self, bucket: str) -> None:
        if bucket in self._ready:
            return
        s3 = self.client()
        try:
            s3.head_bucket(Bucket=bucket)
        except Exception as exc:  # noqa: BLE001 - translated below
            status, code = _status_code(exc)
            if status == 404 or code in ("NoSuchBucket", "404", "NotFound"):
                if not self.config.create_buckets:
                    raise StorageBucketRejected(
                        f"bucket {bucket!r} does not exist; create it or set STORAGE_CREATE_BUCKETS=true") from exc
                self._create_bucket(bucket)
                if bucket == self.config.public_bucket:
                    self._make_public(bucket)
            else:
                raise _translate(exc, what=f"checking bucket {bucket!r}", bucket=bucket) from exc
        self._ready.add(bucket)

    def _create_bucket(self, bucket: str) -> None:
        args: dict[str, Any] = {"Bucket": bucket}
        if self.config.region and self.config.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}
        try:
            self.client().create_bucket(**args)
            log.info("created bucket %r", bucket)
        except Exception as exc:  # noqa: BLE001
            _, code = _status_code(exc)
            if code in ("BucketAlreadyOwnedByYou",):
                return
            raise _translate(exc, what=f"creating missing bucket {bucket!r}", bucket=bucket,
                             hint="create the bucket yourself, or give these credentials s3:CreateBucket") from exc

    def _make_public(self, bucket: str) -> None:
        """A newly created PUBLIC_BUCKET gets a read-only public policy for objects (never for listing)."""
        import json

        policy = {"Version": "2012-10-17", "Statement": [{
            "Sid": "PublicReadObjects", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{bucket}/*"}]}
        try:
            self.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        except Exception as exc:  # noqa: BLE001 - a CDN may serve the bucket instead: warn, do not fail
            _, code = _status_code(exc)
            log.warning("created PUBLIC_BUCKET %r but could not make its objects public (%s): allow public reads "
                        "(bucket policy, or a CDN via S3_PUBLIC_URL_TEMPLATE) or public URLs will not open",
                        bucket, code or type(exc).__name__)

    def _upload(self, bucket: str, path: Path, key: str, size: int, content_type: str, sha256: str,
                on_progress: ProgressCallback | None) -> None:
        from boto3.s3.transfer import TransferConfig

        s3 = self.client()
        arrived: queue.SimpleQueue[int] = queue.SimpleQueue()  # byte counts from s3transfer's threads
        done, reported = 0, -1

        def drain() -> None:
            # Every 1 % step that arrived is reported, in order, even when the upload finished between two
            # polls: progress does not depend on how fast the store answers.
            nonlocal done, reported
            while not arrived.empty():
                done += arrived.get()
                step = int(100 * done / size) if size else 100
                if step > reported:
                    reported = step
                    report(on_progress, step / 100)

        chunk = self.config.chunk_bytes
        transfer = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk,
                                  max_concurrency=self.config.max_concurrency, max_io_queue=self.config.max_concurrency,
                                  io_chunksize=256 * 1024, use_threads=True)
        extra = {"ContentType": content_type, "Metadata": {"sha256": sha256},
                 "CacheControl": "public, max-age=31536000, immutable"}
        try:
            # s3transfer calls ``progress`` from its worker threads; ``on_progress`` is reported from this thread
            # only (sinks such as Prefect's API client belong to the caller's thread).
            with ThreadPoolExecutor(1, thread_name_prefix="s3-upload") as pool:
                future = pool.submit(s3.upload_file, str(path), bucket, key, ExtraArgs=extra, Config=transfer,
                                     Callback=arrived.put)
                while True:
                    try:
                        future.result(timeout=0.25)
                        break
                    except FutureTimeout:
                        drain()
                drain()
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, what=f"uploading {key!r} ({human_bytes(size)}) to bucket {bucket!r}", bucket=bucket,
                             size=size) from exc
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, what=f"checking {key!r} in bucket {bucket!r} after upload", bucket=bucket) from exc
        stored = int(head.get("ContentLength", -1))
        if stored != size:
            # A short object is worth one more upload: a truncated transfer is the usual cause.
            raise StorageError(f"bucket {bucket!r} holds {stored} bytes for {key!r}, the local file has {size}")

    def _url(self, bucket: str, key: str, public: bool) -> tuple[str, str, str | None]:
        c = self.config
        if public:
            return self.public_url(bucket, key), "public", None
        try:
            url = self.client().generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key,
                                      "ResponseContentDisposition": f'attachment; filename="{key.rsplit("/", 1)[-1]}"'},
                ExpiresIn=c.signed_url_ttl)
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, what=f"signing a URL for {key!r}", bucket=bucket) from exc
        expires = (datetime.now(UTC) + timedelta(seconds=c.signed_url_ttl)).isoformat(timespec="seconds")
        return url, "signed", expires

    def public_url(self, bucket: str, key: str) -> str:
        c = self.config
        endpoint = (c.endpoint_url or f"https://s3.{c.region}.amazonaws.com").rstrip("/")
        template = c.public_url_template or "{endpoint}/{bucket}/{key}"
        return template.format(endpoint=endpoint, bucket=bucket, region=c.region,
                               key=urllib.parse.quote(key, safe="/"))


def _status_code(exc: BaseException) -> tuple[int | None, str | None]:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status, response.get("Error", {}).get("Code")
    return None, None


def _translate(exc: BaseException, *, what: str, bucket: str, size: int | None = None,
               hint: str | None = None) -> Exception:
    """botocore / s3transfer exceptions -> StorageError (transient) or StorageRejected (permanent)."""
    from botocore.exceptions import (
        BotoCoreError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    cause: BaseException = exc
    # s3transfer wraps the part's ClientError in S3UploadFailedError with the original in its context
    while cause.__cause__ is not None or cause.__context__ is not None:
        if _status_code(cause) != (None, None):
            break
        nxt = cause.__cause__ or cause.__context__
        assert nxt is not None
        cause = nxt
    if isinstance(cause, NoCredentialsError | PartialCredentialsError):
        return StorageRejected(f"{what}: no usable S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                               "or S3_BLOCK")
    if isinstance(cause, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | ConnectionClosedError
                  | ConnectionError | TimeoutError):
        return StorageError(f"{what}: {type(cause).__name__}")
    status, code = _status_code(cause)
    message = ""
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        message = str(response.get("Error", {}).get("Message") or "")
    detail = f"{what}: {code or 'error'} (HTTP {status}){': ' + message if message else ''}"
    if code in _TRANSIENT_CODES or (status is not None and is_transient_status(status)):
        return StorageError(detail)
    if code == "EntityTooLarge" or status == 413:
        size_text = f" the file is {size} bytes ({human_bytes(size)});" if size is not None else ""
        return StorageBucketRejected(f"{detail};{size_text} raise the bucket's object size limit or use a smaller "
                                     f"format or bitrate")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return StorageBucketRejected(f"{detail}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or S3_BLOCK)")
    if code in _BUCKET_CODES or status in (401, 403, 404):
        advice = hint or f"check that bucket {bucket!r} exists and these credentials may write to it"
        return StorageBucketRejected(f"{detail}; {advice}")
    if status is None and code is None:
        if isinstance(cause, BotoCoreError | OSError):
            # Not an HTTP answer at all (socket reset mid-part and the like): worth another try.
            return StorageError(f"{what}: {type(cause).__name__}")
        return StorageRejected(f"{what}: unexpected {type(cause).__name__}: {cause}")
    return StorageRejected(detail)
