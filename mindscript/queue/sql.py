"""The named query blocks of ``queries.sql``, parsed once at import (procrastinate style)."""

from __future__ import annotations

import re
from importlib import resources

_BLOCK = re.compile(r"(?:\n|^)-- ([a-z0-9_]+) --\n(?:-- .+\n)*", re.MULTILINE)


def parse_query_file(text: str) -> dict[str, str]:
    """``{name: statement}`` for every ``-- name --`` block; the file's header comment is skipped."""
    parts = _BLOCK.split(text)
    return {name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)}


QUERIES: dict[str, str] = parse_query_file(
    (resources.files("mindscript.queue") / "queries.sql").read_text(encoding="utf-8")
)
