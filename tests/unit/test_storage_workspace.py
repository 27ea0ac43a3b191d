from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from mindscript import workspace
from mindscript.errors import StorageRejected
from mindscript.storage.base import render_key
from mindscript.storage.local import LocalStorage


def test_render_key_is_date_based_and_content_addressed() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    key = render_key("job-1", digest, "mp3", day=date(2026, 1, 2))
    assert key == f"renders/2026/01/02/job-1/{digest[:16]}.mp3"
    with pytest.raises(ValueError, match="'../x'"):
        render_key("../x", digest, "mp3")


def test_local_storage_round_trip_and_idempotent(tmp_path: Path) -> None:
    src = tmp_path / "a.mp3"
    src.write_bytes(b"ID3" + os.urandom(1000))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    storage = LocalStorage(tmp_path / "out")
    key = render_key("job-1", digest, "mp3")
    first = storage.put(src, key, content_type="audio/mpeg", public=False, sha256=digest)
    again = storage.put(src, key, content_type="audio/mpeg", public=False, sha256=digest)
    assert first == again
    stored = Path(first.url.removeprefix("file://"))
    assert stored.read_bytes() == src.read_bytes() and first.size == 1003


@pytest.mark.parametrize("key", ["../escape.mp3", "/etc/passwd", "a/../../b.mp3", "a\x00b", ""])
def test_local_storage_refuses_escaping_keys(tmp_path: Path, key: str) -> None:
    src = tmp_path / "a.mp3"
    src.write_bytes(b"x")
    with pytest.raises(StorageRejected):
        LocalStorage(tmp_path / "out").put(src, key, content_type="audio/mpeg", public=False, sha256="0" * 64)


def test_workspace_removed_on_success_and_failure(tmp_path: Path) -> None:
    with workspace.workspace(tmp_path, "job") as ws:
        (ws / "f").write_bytes(b"1")
    assert not ws.exists()
    with pytest.raises(RuntimeError), workspace.workspace(tmp_path, "job") as ws2:
        raise RuntimeError("boom")
    assert not ws2.exists()


def test_sweep_removes_only_dead_owners(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "job-stale"
    stale.mkdir()
    (stale / "owner").write_text(dead.stdout.strip())
    mine = workspace.create(tmp_path, "job-live")
    removed = workspace.sweep_stale(tmp_path)
    assert removed == [stale] and not stale.exists() and mine.exists()
