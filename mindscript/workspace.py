"""A private directory per job for every intermediate file, removed whatever happens.

Each workspace holds an ``owner`` file with the creating process's pid; ``sweep_stale()`` (run at start-up)
removes workspaces whose owner process is gone, e.g. after a SIGKILL.

A workspace is always a direct child of the root named ``<label>-<pid>-<8 hex>``, where the label is the job
id reduced to ``[A-Za-z0-9._-]`` (at most 64 characters): job ids are validated upstream, but a path is never
built from one here without that reduction (no ``..``, separators, NUL, absolute paths or unicode tricks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
_OWNER = "owner"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WORKSPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}-[0-9]+-[0-9a-f]{8}")


def label(job_id: str) -> str:
    """``job_id`` as a safe, readable file-name prefix: other characters become ``_``, no leading dot."""
    text = _UNSAFE.sub("_", str(job_id))[:64].lstrip("._-")
    return text or "job"


def create(root: Path, job_id: str) -> Path:
    """A new, empty, owner-only workspace directory under ``root`` for ``job_id``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # the random suffix keeps concurrent renders of one job apart
    path = root / f"{label(job_id)}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    (path / _OWNER).write_text(str(os.getpid()))
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def workspace(root: Path, job_id: str) -> Iterator[Path]:
    """Create a workspace and remove it on success, failure, SIGINT and (with the CLI's handler) SIGTERM."""
    path = create(root, job_id)
    try:
        yield path
    finally:
        remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(root: Path) -> list[Path]:
    """Remove workspaces left by processes that no longer exist; returns what was removed."""
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        if child.is_symlink() or not child.is_dir():
            continue  # never follow a link out of the root
        try:
            pid = int((child / _OWNER).read_text().strip())
        except (OSError, ValueError):
            pid = -1
        if pid == os.getpid() or (pid > 0 and _alive(pid)):
            continue
        if pid == -1:
            # No owner file: only a workspace whose creation was cut short, by our naming; WORK_DIR may be
            # shared with other things, and those are not ours to delete.
            if not _WORKSPACE_NAME.fullmatch(child.name):
                continue
            if time.time() - child.stat().st_mtime < 60:
                continue  # possibly being created right now by another process
        remove(child)
        removed.append(child)
        log.info("removed stale workspace %s (owner pid %s gone)", child.name, pid)
    return removed
