"""The storage Protocol and the immutable, date-based key scheme."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal, Protocol

CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav"}
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class StoredObject:
    """Where a delivered file ended up (small and JSON-friendly: it goes into the result)."""

    backend: str
    bucket: str | None
    key: str
    url: str
    url_kind: Literal["file", "public", "signed"]
    size: int
    sha256: str
    expires_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Storage(Protocol):
    """Stores a finished local file under ``key`` and returns where it is."""

    name: str

    def put(self, path: Path, key: str, *, content_type: str, public: bool, sha256: str) -> StoredObject: ...


def render_key(job_id: str, sha256: str, ext: str, day: date | None = None) -> str:
    """``renders/YYYY/MM/DD/<job id>/<hash prefix>.<ext>``: same bytes, same key; new bytes, new key.

    Never overwriting a path matters because CDNs cache by path.
    """
    if not _SAFE_SEGMENT.match(job_id):
        raise ValueError(f"job id {job_id!r} is not safe as a storage key segment")
    if ext not in CONTENT_TYPES:
        raise ValueError(f"unknown output extension {ext!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    d = day or date.today()
    return f"renders/{d:%Y/%m/%d}/{job_id}/{sha256[:16]}.{ext}"
