"""The storage Protocol, the immutable date-based key scheme, and what every backend shares.

Retries live here, in the adapters, not in the Prefect task: an adapter knows what a retry means for its
protocol (a TUS upload resumes from the server's offset; a multipart upload restarts cleanly), while a
task-level retry would repeat hashing and re-resolve everything. ``store_output`` therefore declares no
retries of its own, so a transient failure is retried exactly ``STORAGE_RETRIES`` times, never
adapter x task times.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from mindscript.errors import AssetTooLarge, StorageBucketRejected, StorageError, StorageRejected

log = logging.getLogger(__name__)

CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav"}
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch only: `$` would let "id\n" through
ProgressCallback = Callable[[float], None]
T = TypeVar("T")


@dataclass(frozen=True)
class StoredObject:
    """Where a delivered file ended up (small and JSON-friendly: it goes into the result).

    ``url`` is a file URI, a public URL or a signed URL; a signed URL is a bearer credential until
    ``expires_at`` (ISO 8601, UTC), so it is returned, never logged. ``fallback_from`` names the bucket
    that refused the file when it was stored in ``UPLOAD_FALLBACK_BUCKET`` instead.
    """

    backend: str
    bucket: str | None
    key: str
    url: str
    url_kind: Literal["file", "public", "signed"]
    size: int
    sha256: str
    expires_at: str | None = None
    content_type: str | None = None
    fallback_from: str | None = None
    fallback_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __repr__(self) -> str:  # the URL may be signed: keep it out of reprs (and so out of logs)
        return (f"StoredObject(backend={self.backend!r}, bucket={self.bucket!r}, key={self.key!r}, "
                f"url_kind={self.url_kind!r}, size={self.size})")


class Storage(Protocol):
    """Stores a finished local file under ``key`` and returns where it is.

    ``on_progress`` receives the uploaded fraction (0..1) as the upload advances. Implementations raise
    ``StorageError`` (transient, already retried inside the adapter when it gets out) or ``StorageRejected``
    (permanent: a message that says what to change).
    """

    name: str

    def put(self, path: Path, key: str, *, content_type: str, public: bool, sha256: str,
            on_progress: ProgressCallback | None = None) -> StoredObject: ...


class StorageReader(Protocol):
    """Reads an object (an uploaded recording) back out of the configured storage, streamed to a file.

    Implementations stream in pieces (never the whole object in memory), refuse objects over ``max_bytes``
    (by the declared size first, then by what actually arrives), apply ``timeout_s`` to every network
    operation, and retry transient failures inside the adapter (STORAGE_RETRIES). They raise
    ``AssetNotFound`` (no such object), ``AssetTooLarge``, ``StorageRejected`` (an unsafe key, or access
    denied) or ``StorageError`` (still failing after the retries).
    """

    name: str

    def download(self, key: str, dest: Path, *, bucket: str | None, max_bytes: int, timeout_s: float) -> int:
        """Write object ``key`` of ``bucket`` (the private bucket when None; local storage has none) to
        ``dest``; returns the number of bytes written. ``dest`` is removed again on any failure."""
        ...


def check_object_key(key: str, prefix: str = "") -> str:
    """``key`` if it is a plain relative object key inside ``prefix``; else ``StorageRejected``.

    Refused: empty, absolute, backslashes, NUL, control characters, ``.``/``..`` segments, empty segments,
    percent-encoded forms (``%2e%2e%2f``, double-encoded too), and anything outside ``prefix``. Object stores
    do not resolve ``..`` themselves, but proxies, CDNs and some S3-compatible servers normalize paths, so a
    key that could mean another key once decoded or normalized is never sent.
    """
    decoded = key
    for _ in range(3):  # double-encoded (%252e) too
        decoded = urllib.parse.unquote(decoded)
    if decoded != key:
        raise StorageRejected(f"storage key {key!r} contains percent-encoded characters; use the plain form")
    if (not key or key.startswith("/") or "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key)
            or (len(key) > 1 and key[1] == ":")):
        raise StorageRejected(f"storage key {key!r} is not a relative object key")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageRejected(f"storage key {key!r} has an empty, '.' or '..' segment")
    if prefix and not key.startswith(prefix):
        raise StorageRejected(f"storage key {key!r} is outside the configured prefix {prefix!r}")
    return key


def write_capped(pieces: Iterable[bytes], dest: Path, *, max_bytes: int, what: str) -> int:
    """Write ``pieces`` to ``dest``, stopping with ``AssetTooLarge`` once more than ``max_bytes`` arrived (a
    declared size can lie). Removes ``dest`` on any failure; returns the byte count."""
    total = 0
    try:
        with open(dest, "wb") as out:
            for piece in pieces:
                total += len(piece)
                if total > max_bytes:
                    raise AssetTooLarge(f"{what} exceeds the {max_bytes}-byte limit (MAX_ASSET_BYTES)")
                out.write(piece)
    except BaseException:
        Path(dest).unlink(missing_ok=True)
        raise
    return total


def render_key(job_id: str, sha256: str, ext: str, day: date | None = None) -> str:
    """``renders/YYYY/MM/DD/<job id>/<hash prefix>.<ext>``: same bytes, same key; new bytes, new key.

    Never overwriting a path matters because CDNs cache by path.
    """
    if not isinstance(job_id, str) or not _SAFE_SEGMENT.fullmatch(job_id):
        shown = repr(job_id)
        shown = shown if len(shown) <= 150 else f"{shown[:130]}...({len(shown)} characters)"
        raise ValueError(f"job id {shown} is not safe as a storage key segment (1-128 of A-Z a-z 0-9 . _ -)")
    if ext not in CONTENT_TYPES:
        raise ValueError(f"unknown output extension {ext!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    d = day or date.today()
    return f"renders/{d:%Y/%m/%d}/{job_id}/{sha256[:16]}.{ext}"


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``retries`` retries of a transient failure, waiting ``base_delay_s * 2**n`` (capped) before each."""

    retries: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def delays(self) -> Sequence[float]:
        return [min(self.max_delay_s, self.base_delay_s * 2**n) for n in range(self.retries)]

    def run(self, op: Callable[[], T], *, what: str, before_retry: Callable[[], None] | None = None) -> T:
        """``op()``; a ``StorageError`` is retried after the next delay, anything else propagates at once."""
        delays = self.delays()
        for attempt in range(len(delays) + 1):
            try:
                return op()
            except StorageError as exc:
                if attempt == len(delays):
                    raise StorageError(f"{what} still failing after {attempt + 1} attempts: {exc.message}") from exc
                log.warning("%s failed (attempt %d of %d), retrying in %.2f s: %s", what, attempt + 1,
                            len(delays) + 1, delays[attempt], exc.message)
                self.sleep(delays[attempt])
                if before_retry is not None:
                    before_retry()
        raise AssertionError("unreachable")


def is_transient_status(status: int) -> bool:
    """Timeouts, rate limits and server errors may pass; every other 4xx is the request's own fault."""
    return status in (408, 425, 429) or status >= 500


def with_fallback(put_to: Callable[[str], StoredObject], bucket: str, fallback: str | None) -> StoredObject:
    """Store in ``bucket``; if the bucket itself refuses (missing, forbidden, file size limit) and a fallback
    bucket is configured, store there once and say so in the result."""
    try:
        return put_to(bucket)
    except StorageBucketRejected as exc:
        if not fallback or fallback == bucket:
            raise
        refused = exc
    # The fallback runs outside the except block on purpose: an exception raised (or re-raised from a transfer
    # thread) while the refusal is being handled gets the refusal as its __context__, and the S3 adapter reads
    # a vendor status from the chain: a transient 500 on the fallback was taken for the first bucket's 403.
    log.warning("bucket %r refused the upload (%s); storing in UPLOAD_FALLBACK_BUCKET %r", bucket,
                refused.message, fallback)
    try:
        stored = put_to(fallback)
    except StorageBucketRejected as again:
        raise StorageBucketRejected(
            f"{refused.message}; UPLOAD_FALLBACK_BUCKET={fallback!r} refused it too: {again.message}") from again
    return replace(stored, fallback_from=bucket, fallback_reason=refused.message)


def file_size(path: Path) -> int:
    return Path(path).stat().st_size


def human_bytes(n: int | float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def report(on_progress: ProgressCallback | None, fraction: float) -> None:
    if on_progress is not None:
        on_progress(min(1.0, max(0.0, fraction)))
