"""Fetching a job's input files (background track, uploaded recordings) into its workspace.

A source is an ``https://`` (or, when allowed, ``http://``) URL, a ``file://`` URI, or a local path; local
files are only accepted where the caller allows them (CLI renders), never for queue jobs.
"""

from __future__ import annotations

import logging
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mindscript.errors import AssetNotFound, AssetTooLarge, DownloadFailed, PermanentError

log = logging.getLogger(__name__)
_CHUNK = 1 << 16


def fetch(
    source: str,
    dest_dir: Path,
    *,
    name: str,
    max_bytes: int,
    timeout_s: float,
    allow_local: bool,
    base_dir: Path | None = None,
    field: str = "source",
) -> Path:
    """Copy or download ``source`` to ``dest_dir/name<suffix>`` with a byte cap; returns the path."""
    parsed = urllib.parse.urlparse(source)
    suffix = Path(urllib.parse.unquote(parsed.path)).suffix.lower()[:8]
    dest = Path(dest_dir) / f"{name}{suffix if suffix.isascii() else ''}"
    if parsed.scheme in ("http", "https"):
        _download(source, dest, max_bytes=max_bytes, timeout_s=timeout_s, field=field)
        return dest
    if parsed.scheme not in ("", "file") or (parsed.scheme == "" and len(source) > 1 and source[1] == ":"):
        raise PermanentError(f"{field}: unsupported URL scheme {parsed.scheme!r} in {source!r}")
    if not allow_local:
        raise PermanentError(f"{field}: local files are not allowed for this job (got {source!r})")
    path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else source).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise AssetNotFound(f"{field}: file not found: {source!r}")
    size = path.stat().st_size
    if size > max_bytes:
        raise AssetTooLarge(f"{field}: {source!r} is {size} bytes, over the {max_bytes}-byte limit")
    shutil.copyfile(path, dest)
    return dest


def _download(url: str, dest: Path, *, max_bytes: int, timeout_s: float, field: str) -> None:
    shown = redact_url(url)
    request = urllib.request.Request(url, headers={"User-Agent": "mindscript-render/0.1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp, open(dest, "wb") as out:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise AssetTooLarge(f"{field}: {shown} is {declared} bytes, over the {max_bytes}-byte limit")
            total = 0
            while chunk := resp.read(_CHUNK):
                total += len(chunk)
                if total > max_bytes:  # Content-Length can lie: count what actually arrives
                    raise AssetTooLarge(f"{field}: {shown} exceeds the {max_bytes}-byte limit")
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        dest.unlink(missing_ok=True)
        if exc.code in (404, 410):
            raise AssetNotFound(f"{field}: {shown} returned HTTP {exc.code}") from exc
        if exc.code in (408, 429) or exc.code >= 500:
            raise DownloadFailed(f"{field}: {shown} returned HTTP {exc.code}") from exc
        raise PermanentError(f"{field}: {shown} returned HTTP {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        dest.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DownloadFailed(f"{field}: could not download {shown}: {reason}") from exc
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def redact_url(url: str) -> str:
    """The URL without its query string and credentials (signed URLs carry tokens there)."""
    p = urllib.parse.urlparse(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urllib.parse.urlunparse((p.scheme, host, p.path, "", "", ""))
