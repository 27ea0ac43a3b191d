"""One error taxonomy for the whole worker.

``RenderError`` is the root. ``TransientError`` means "the same call may succeed later" and is the only kind
the Prefect tasks retry; ``PermanentError`` fails the job at once. Vendor exceptions are translated into these
inside their adapters (``raise ... from exc``) so nothing above an adapter sees a vendor type.

Every error carries a stable ``code`` (for the result contract) and, optionally, the pipeline ``stage`` it
happened in. Messages name the offending field or file and quote the value, never a secret.
"""

from __future__ import annotations


class RenderError(Exception):
    """Root of every error the worker raises on purpose."""

    code: str = "RENDER_ERROR"

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "stage": self.stage}


class TransientError(RenderError):
    """A failure that may go away on retry (timeouts, 5xx, rate limits)."""

    code = "TRANSIENT_ERROR"


class PermanentError(RenderError):
    """A failure that retrying cannot fix (bad input, bad credentials, corrupt files)."""

    code = "PERMANENT_ERROR"


class InvalidJob(PermanentError):
    """The job payload failed validation; the message names the field and quotes the value."""

    code = "INVALID_JOB"


class DurationTooLong(PermanentError):
    code = "DURATION_TOO_LONG"


class InvalidAudio(PermanentError):
    """A file could not be decoded as audio (corrupt, not audio, unsupported)."""

    code = "INVALID_AUDIO"


class AssetNotFound(PermanentError):
    code = "ASSET_NOT_FOUND"


class AssetTooLarge(PermanentError):
    code = "ASSET_TOO_LARGE"


class AssetRefused(PermanentError):
    """A download the network policy forbids: scheme, host, private or metadata address, too many redirects."""

    code = "ASSET_REFUSED"


class DownloadFailed(TransientError):
    code = "DOWNLOAD_FAILED"


class ProviderError(TransientError):
    """A TTS provider failed in a way that may succeed later."""

    code = "PROVIDER_ERROR"


class ProviderRateLimited(TransientError):
    code = "PROVIDER_RATE_LIMITED"


class ProviderAuthFailed(PermanentError):
    code = "PROVIDER_AUTH_FAILED"


class ProviderRejected(PermanentError):
    """The provider refused the request itself (bad voice id, text too long, quota exhausted)."""

    code = "PROVIDER_REJECTED"


class EncoderFailed(PermanentError):
    code = "ENCODER_FAILED"


class StorageError(TransientError):
    code = "STORAGE_ERROR"


class StorageRejected(PermanentError):
    code = "STORAGE_REJECTED"


class StorageBucketRejected(StorageRejected):
    """The bucket itself refused the file (missing, forbidden, file size limit): UPLOAD_FALLBACK_BUCKET applies."""

    code = "STORAGE_BUCKET_REJECTED"


class QualityCheckFailed(PermanentError):
    code = "QUALITY_CHECK_FAILED"


class Cancelled(PermanentError):
    code = "CANCELLED"


# -- queue (issue 5) -----------------------------------------------------------------------------------------
class QueueUnavailable(TransientError):
    """The queue's database or REST endpoint could not be reached."""

    code = "QUEUE_UNAVAILABLE"


class QueueError(PermanentError):
    """The queue refused a request (permissions, missing migration, bad arguments)."""

    code = "QUEUE_ERROR"
