"""Local storage: keys that escape STORAGE_DIR are refused in every spelling; progress reaches 1."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mindscript.errors import StorageRejected
from mindscript.storage.base import render_key
from mindscript.storage.local import LocalStorage


@pytest.mark.parametrize("key", [
    "../escape.mp3", "a/../../b.mp3", "/etc/passwd", "\\\\host\\share", "C:/x.mp3", "a\\..\\b.mp3", "a\x00b", "",
    "%2e%2e%2fescape.mp3", "%2E%2E/escape.mp3", "a/%2e%2e%2f%2e%2e%2fb.mp3", "%2fetc%2fpasswd", "a%5c..%5cb",
    "%252e%252e%252fescape.mp3", "renders/./x.mp3", "renders/%00.mp3",
])
def test_escaping_keys_are_refused(tmp_path: Path, key: str) -> None:
    src = tmp_path / "a.mp3"
    src.write_bytes(b"x")
    with pytest.raises(StorageRejected):
        LocalStorage(tmp_path / "out").put(src, key, content_type="audio/mpeg", public=False, sha256="0" * 64)
    assert not (tmp_path / "escape.mp3").exists()


def test_round_trip_reports_progress_and_content_type(tmp_path: Path) -> None:
    src = tmp_path / "a.wav"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    seen: list[float] = []
    stored = LocalStorage(tmp_path / "out").put(src, render_key("job-1", digest, "wav"), content_type="audio/wav",
                                                public=True, sha256=digest, on_progress=seen.append)
    assert Path(stored.url.removeprefix("file://")).read_bytes() == src.read_bytes()
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 4
    assert stored.url_kind == "file" and stored.content_type == "audio/wav" and stored.size == src.stat().st_size
