"""Local storage: files under a directory (default ./output); URLs are file URIs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mindscript.errors import StorageRejected
from mindscript.storage.base import StoredObject


class LocalStorage:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def resolve(self, key: str) -> Path:
        """The file for ``key``; refuses any key that would escape the root (``..``, absolute, NUL)."""
        if not key or "\x00" in key or key.startswith(("/", "\\")) or "\\" in key:
            raise StorageRejected(f"storage key {key!r} is not a relative path")
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root):
            raise StorageRejected(f"storage key {key!r} escapes the storage directory")
        return target

    def put(self, path: Path, key: str, *, content_type: str, public: bool, sha256: str) -> StoredObject:
        target = self.resolve(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        size = Path(path).stat().st_size
        if not (target.exists() and target.stat().st_size == size):
            # Copy then rename: a reader never sees a half-written file under the final name.
            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
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
        )
