"""Local storage: files under a directory (default ./output); URLs are file URIs."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from mindscript.errors import StorageRejected
from mindscript.storage.base import ProgressCallback, StoredObject, report

_COPY_CHUNK = 1 << 20


class LocalStorage:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def resolve(self, key: str) -> Path:
        """The file for ``key``; refuses any key that would escape the root.

        Refused: empty, absolute, backslashes, NUL, ``..``/``.`` segments, and percent-encoded forms of any
        of these (``%2e%2e%2f``): a key that means something else once a server or CDN decodes it is not a
        key this storage should hold.
        """
        decoded = key
        for _ in range(3):  # double-encoded (%252e) too
            decoded = urllib.parse.unquote(decoded)
        for candidate in {key, decoded}:
            if (not candidate or "\x00" in candidate or candidate.startswith(("/", "\\")) or "\\" in candidate
                    or (len(candidate) > 1 and candidate[1] == ":")):
                raise StorageRejected(f"storage key {key!r} is not a relative path")
            if any(part in ("..", ".") for part in candidate.split("/")):
                raise StorageRejected(f"storage key {key!r} has a '.' or '..' segment (it would escape STORAGE_DIR)")
        if decoded != key:
            raise StorageRejected(f"storage key {key!r} contains percent-encoded characters; use the plain form")
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root):
            raise StorageRejected(f"storage key {key!r} escapes the storage directory")
        return target

    def put(self, path: Path, key: str, *, content_type: str, public: bool, sha256: str,
            on_progress: ProgressCallback | None = None) -> StoredObject:
        target = self.resolve(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        size = Path(path).stat().st_size
        if not (target.exists() and target.stat().st_size == size):
            # Copy then rename: a reader never sees a half-written file under the final name.
            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            done = 0
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(_COPY_CHUNK):
                    dst.write(chunk)
                    done += len(chunk)
                    report(on_progress, done / size if size else 1.0)
            os.replace(tmp, target)
        report(on_progress, 1.0)
        stored = target.stat().st_size
        if stored != size:
            raise StorageRejected(f"stored size {stored} of {key!r} differs from the local file ({size} bytes)")
        return StoredObject(
            backend=self.name,
            bucket=None,
            key=key,
            url=target.as_uri(),
            url_kind="file",
            size=stored,
            sha256=sha256,
            content_type=content_type,
        )
