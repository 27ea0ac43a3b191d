"""Keep credentials out of text that leaves an adapter (error messages quote vendors, and vendors echo keys).

A vendor's error body is quoted in our messages because it says what went wrong; a proxy or a vendor may
echo the credential it rejected ("Incorrect API key provided: sk-..."), whole or cut. Each adapter passes its
own secrets through ``redact`` before a vendor's words go into a ``RenderError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"
MIN_FRAGMENT = 8  # a token this long that is part of a secret is taken to be a piece of it
# Runs of the characters keys, tokens and signatures are made of (JWTs: base64url and dots).
_TOKEN = re.compile(rf"[A-Za-z0-9_\-.+/=~:@%]{{{MIN_FRAGMENT},}}")


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every token that shares a run of ``MIN_FRAGMENT`` characters with one of ``secrets``
    (the whole secret, or a piece of it cut or masked at either end) replaced by ``[redacted]``."""
    keys = [s for s in secrets if s and len(s) >= MIN_FRAGMENT]
    if not text or not keys:
        return text
    grams = {key[i:i + MIN_FRAGMENT] for key in keys for i in range(len(key) - MIN_FRAGMENT + 1)}

    def sub(match: re.Match[str]) -> str:
        token = match.group(0)
        hit = any(token[i:i + MIN_FRAGMENT] in grams for i in range(len(token) - MIN_FRAGMENT + 1))
        return REDACTED if hit else token

    return _TOKEN.sub(sub, text)


def _clean(value: Any, keys: list[str], depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact(value, keys)
    if depth > 16:
        return value
    if isinstance(value, dict):
        return {k: _clean(v, keys, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clean(v, keys, depth + 1) for v in value)
    return value


def scrub(exc: BaseException, secrets: Iterable[str | None]) -> BaseException:
    """Redact ``secrets``, in place, from what ``exc`` shows when printed: its args and its string, dict and
    list attributes (SDK errors print their vendor's body). For ``raise Translated(...) from scrub(exc, ...)``:
    the cause stays in the chain, and in tracebacks Prefect logs and stores, without the key."""
    keys = [s for s in secrets if s and len(s) >= MIN_FRAGMENT]
    if keys:
        exc.args = tuple(_clean(a, keys) for a in exc.args)
        for name, value in list(vars(exc).items()):
            if isinstance(value, str | dict | list | tuple):
                try:
                    setattr(exc, name, _clean(value, keys))
                except (AttributeError, TypeError):  # a read-only property shadowing the attribute
                    pass
    return exc
