"""A private directory per job for every intermediate file, removed whatever happens.

Each workspace holds an ``owner`` file with the creating process's pid; ``sweep_stale()`` (run at start-up)
removes workspaces whose owner process is gone, e.g. after a SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
_OWNER = "owner"


def create(root: Path, job_id: str) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # job ids are validated to a safe alphabet; the random suffix keeps concurrent renders of one job apart
    path = root / f"{job_id[:64]}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
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
        if not child.is_dir():
            continue
        try:
            pid = int((child / _OWNER).read_text().strip())
        except (OSError, ValueError):
            pid = -1
        if pid == os.getpid() or (pid > 0 and _alive(pid)):
            continue
        if pid == -1 and time.time() - child.stat().st_mtime < 60:
            continue  # possibly being created right now by another process
        remove(child)
        removed.append(child)
        log.info("removed stale workspace %s (owner pid %s gone)", child.name, pid)
    return removed
