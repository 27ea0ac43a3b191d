"""Local storage: files under a directory (default ./output); URLs are file URIs."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from mindscript.errors import AssetNotFound, AssetTooLarge, StorageRejected
from mindscript.storage.base import ProgressCallback, StoredObject, check_object_key, report, write_capped

_COPY_CHUNK = 1 << 20


class LocalStorage:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def resolve(self, key: str) -> Path:
        """The file for ``key``; refuses any key that would escape the root.

        Refused: empty, absolute, backslashes, NUL and other control characters, ``..``/``.`` segments,
        percent-encoded forms of any of these (``%2e%2e%2f``): a key that means something else once a server
        or CDN decodes it is not a key this storage should hold; and keys over S3's 1024 bytes or with a
        segment over 255 bytes (a file name the file system would refuse half-way through ``put``).
        """
        shown = key if len(key) <= 150 else f"{key[:130]}...({len(key)} characters)"
        if len(key.encode("utf-8", "surrogatepass")) > 1024 or any(
                len(part.encode("utf-8", "surrogatepass")) > 255 for part in key.split("/")):
            raise StorageRejected(f"storage key {shown!r} is too long (1024 bytes, 255 per segment)")
        if any(ord(c) < 32 or ord(c) == 127 for c in key):
            raise StorageRejected(f"storage key {shown!r} contains control characters")
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

    def download(self, key: str, dest: Path, *, bucket: str | None = None, max_bytes: int,
                 timeout_s: float = 0.0) -> int:
        """Copy the file of ``key`` to ``dest`` (``bucket`` and ``timeout_s`` do not apply to a directory)."""
        source = self.resolve(check_object_key(key))  # resolve() also refuses a symlink out of the root
        try:
            size = source.stat().st_size
        except FileNotFoundError:
            raise AssetNotFound(f"storage key {key!r} not found in STORAGE_DIR") from None
        if not source.is_file():
            raise AssetNotFound(f"storage key {key!r} is not a file in STORAGE_DIR")
        if size > max_bytes:
            raise AssetTooLarge(f"storage key {key!r} is {size} bytes, over the {max_bytes}-byte limit")
        with open(source, "rb") as src:
            return write_capped(iter(lambda: src.read(_COPY_CHUNK), b""), dest, max_bytes=max_bytes,
                                what=f"storage key {key!r}")
