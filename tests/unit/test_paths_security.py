"""Storage keys and workspace paths cannot be steered by job ids or file names (issue 7).

Every hostile value is tried against each place a name becomes a path: the storage key scheme
(``render_key``), local storage (``LocalStorage.resolve``/``put``), the per-job workspace and the fetched
file's name. Whatever happens, nothing is created outside its root and errors quote the value, bounded.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mindscript import assets, workspace
from mindscript.errors import PermanentError, StorageRejected
from mindscript.storage.base import check_object_key, render_key
from mindscript.storage.local import LocalStorage

DIGEST = hashlib.sha256(b"x").hexdigest()
HOSTILE = [
    "../x", "..", ".", "a/../../b", "/etc/passwd", "/", "a/b", "a\\b", "..\\..\\x", "C:\\x", "C:x",
    "a\x00b", "\x00", "job\n", "job\r\nX: y", "\t", " ", "", "x" * 129, "x" * 5000, "j\u00f6b", "\uff0e\uff0e",
    "\u202ejob", "job\u200b", "%2e%2e%2f", "%252e%252e", "~root", "-rf", ".hidden", "job/", "CON", "job.",
]
SAFE_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _short(text: str) -> bool:
    return len(text) < 400


# ---- storage keys ----
@pytest.mark.parametrize("job_id", [h for h in HOSTILE if h not in ("CON", "job.")])
def test_render_key_refuses_hostile_job_ids(job_id: str) -> None:
    with pytest.raises(ValueError, match="job id") as info:
        render_key(job_id, DIGEST, "mp3")
    assert _short(str(info.value))


@pytest.mark.parametrize("job_id", ["a", "job-123", "A.b_c-1", "x" * 128, "CON", "job."])
def test_render_key_of_a_safe_id_is_one_plain_segment(job_id: str) -> None:
    key = render_key(job_id, DIGEST, "wav")
    parts = key.split("/")
    assert len(parts) == 6 and parts[4] == job_id and parts[5] == f"{DIGEST[:16]}.wav"
    assert check_object_key(key) == key  # what the cloud backends accept, too


@pytest.mark.parametrize(("sha", "ext"), [("../" + DIGEST[3:], "mp3"), (DIGEST + "\n", "mp3"), (DIGEST, "mp3/../x"),
                                          (DIGEST, "mp3\n"), (DIGEST.upper(), "mp3")])
def test_render_key_refuses_hostile_hash_or_extension(sha: str, ext: str) -> None:
    with pytest.raises(ValueError):
        render_key("job", sha, ext)


@pytest.mark.parametrize("key", [
    "../escape.mp3", "a/../../b.mp3", "/etc/passwd", "a\\b.mp3", "a\x00b", "", "renders/%2e%2e/x.mp3",
    "renders/%252e%252e/x.mp3", "C:/x.mp3", "renders/" + "x" * 300 + ".mp3", "renders/a\nb.mp3",
    "renders/" + "/".join(["d"] * 600) + "/x.mp3",
])
def test_local_storage_refuses_hostile_keys_before_touching_the_disk(tmp_path: Path, key: str) -> None:
    src = tmp_path / "a.mp3"
    src.write_bytes(b"x")
    root = tmp_path / "out"
    with pytest.raises(StorageRejected) as info:
        LocalStorage(root).put(src, key, content_type="audio/mpeg", public=False, sha256=DIGEST)
    assert _short(info.value.message)
    assert not root.exists() or list(root.rglob("*")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp3"]


def test_local_storage_keeps_unicode_lookalikes_inside(tmp_path: Path) -> None:
    src = tmp_path / "a.mp3"
    src.write_bytes(b"x")
    storage = LocalStorage(tmp_path / "out")
    for key in ("renders/\uff0e\uff0e/x.mp3", "renders/\u2025/x.mp3", "renders/j\u00f6b/x.mp3"):
        stored = storage.put(src, key, content_type="audio/mpeg", public=False, sha256=DIGEST)
        assert Path(stored.url.removeprefix("file://")).resolve().is_relative_to(storage.root)


def test_local_storage_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    (root / "renders").mkdir(parents=True)
    (root / "renders" / "link").symlink_to(outside)
    src = tmp_path / "a.mp3"
    src.write_bytes(b"x")
    with pytest.raises(StorageRejected, match="escapes"):
        LocalStorage(root).put(src, "renders/link/x.mp3", content_type="audio/mpeg", public=False, sha256=DIGEST)
    assert list(outside.iterdir()) == []


# ---- workspaces ----
@pytest.mark.parametrize("job_id", HOSTILE)
def test_workspace_is_always_a_direct_child_of_the_root(tmp_path: Path, job_id: str) -> None:
    root = tmp_path / "work"
    before = set(tmp_path.iterdir()) if tmp_path.exists() else set()
    with workspace.workspace(root, job_id) as ws:
        assert ws.parent == root.resolve() or ws.parent == root
        assert SAFE_SEGMENT.fullmatch(ws.name) and len(ws.name) <= 100, ws.name
        assert (ws / "owner").read_text() == str(os.getpid())
        assert oct(ws.stat().st_mode & 0o777) == oct(0o700)
    assert not ws.exists() and list(root.iterdir()) == []
    assert set(tmp_path.iterdir()) - before <= {root}


def test_workspace_names_keep_a_readable_job_id(tmp_path: Path) -> None:
    ws = workspace.create(tmp_path, "job-123")
    assert ws.name.startswith(f"job-123-{os.getpid()}-")
    workspace.remove(ws)


def test_sweep_leaves_foreign_directories_and_links_alone(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    root = tmp_path / "work"
    root.mkdir()
    old = time.time() - 3600
    foreign = root / "photos"  # WORK_DIR pointed at a folder that holds other things
    foreign.mkdir()
    (foreign / "keep.jpg").write_bytes(b"1")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"1")
    (root / "job-1-1234-deadbeef").symlink_to(outside, target_is_directory=True)
    orphan = root / "job-2-99999999-0badf00d"  # our naming, no owner file: a create() interrupted long ago
    orphan.mkdir()
    stale = root / "job-3"
    stale.mkdir()
    (stale / "owner").write_text(dead.stdout.strip())
    for p in (foreign, orphan, stale):
        os.utime(p, (old, old))
    removed = workspace.sweep_stale(root)
    assert sorted(removed) == sorted([orphan, stale])
    assert (foreign / "keep.jpg").exists() and (outside / "keep.txt").exists()
    assert (root / "job-1-1234-deadbeef").is_symlink()


# ---- the fetched file's name ----
@pytest.mark.parametrize(("filename", "suffix"), [
    ("bed.mp3", ".mp3"), ("bed.FLAC", ".flac"), ("bed.w\x01av", ""), ("bed.m p3", ""), ("bed.abcdefghij", ""),
    ("bed.\uff4d\uff50\uff13", ""), ("bed", ""), ("bed.mp3\n", ".mp3"), (".mp3", ""), ("bed.tar.gz", ".gz"),
])
def test_fetched_file_name_is_ours_not_the_sources(tmp_path: Path, filename: str, suffix: str) -> None:
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    (src_dir / filename).write_bytes(b"audio")
    dest = tmp_path / "ws"
    dest.mkdir()
    got = assets.fetch(str(src_dir / filename), dest, name="background-src", max_bytes=100, timeout_s=1,
                       allow_local=True, field="trackUrl")
    assert got == dest / f"background-src{suffix}" and got.read_bytes() == b"audio"


@pytest.mark.parametrize("url", ["https://h.example/a.mp3%00", "https://h.example/x/..%2f..%2fetc%2fpasswd",
                                 "https://h.example/a.mp3%0a", "https://h.example/%2e%2e"])
def test_url_suffix_never_leaves_the_workspace(tmp_path: Path, url: str) -> None:
    pol = assets.FetchPolicy(host_allowlist=("nothing.invalid",))  # refused before any network use
    with pytest.raises(PermanentError):
        assets.fetch(url, tmp_path, name="background-src", max_bytes=100, timeout_s=1, allow_local=False,
                     policy=pol)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/b", "", "a\x00", "x" * 100, ".hidden"])
def test_fetch_name_must_be_plain(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="name must be"):
        assets.fetch("bed.mp3", tmp_path, name=name, max_bytes=1, timeout_s=1, allow_local=True)


@pytest.mark.parametrize(("source", "match"), [
    ("bed\x00.mp3", "NUL byte"), ("/" + "x" * 5000 + ".mp3", "too long"), ("file:///tmp/%00x.mp3", "NUL byte"),
])
def test_hostile_local_paths_fail_with_a_bounded_message(tmp_path: Path, source: str, match: str) -> None:
    with pytest.raises(PermanentError, match=match) as info:
        assets.fetch(source, tmp_path, name="background-src", max_bytes=100, timeout_s=1, allow_local=True,
                     field="payload.projectData.layers.background.trackUrl")
    assert info.value.message.startswith("payload.projectData.layers.background.trackUrl: ")
    assert _short(info.value.message)
    assert list(tmp_path.iterdir()) == []


def test_messages_quote_urls_without_tokens_and_bounded() -> None:
    url = "https://user:pw@cdn.example/a/" + "b" * 1000 + ".mp3?X-Amz-Signature=abc&token=def#frag"
    shown = assets.shown(url)
    assert "pw" not in shown and "Signature" not in shown and "token" not in shown and "frag" not in shown
    assert shown.startswith("https://cdn.example/a/bbb") and len(shown) <= 200
    assert assets.redact_url("https://[::1]:8443/x?y=1") == "https://[::1]:8443/x"
