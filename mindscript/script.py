"""Script text -> speech segments and pauses, and sentence-aware chunking under a provider's limit.

Pause markers the app's editor produces (case-insensitive):

* ``[pause 5s]``, ``[pause 1.5 s]``, ``[pause 2m]``, ``[pause 500ms]`` (a bare number means seconds);
* SSML-style ``<break time="1.5s"/>`` and ``<break time="500ms" />``;
* a blank line between paragraphs, which becomes a pause of ``paragraph_pause_s``.

Adjacent pauses are merged by summing them, so ``"A\\n\\n[pause 5s]\\n\\nB"`` is a 2 + 5 + 2 = 9 s pause
with the defaults: every marker the author wrote counts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TypeAlias

from mindscript.errors import InvalidJob

__all__ = ["Pause", "Segment", "Speech", "chunk_text", "parse_script"]

_FIELD = "projectData.scriptText"


@dataclass(frozen=True)
class Speech:
    """Text to be spoken, whitespace-normalized (single spaces, no leading/trailing space)."""

    text: str


@dataclass(frozen=True)
class Pause:
    """Silence of ``seconds``."""

    seconds: float


Segment: TypeAlias = Speech | Pause

# One scanner for everything that is not speech: pause markers, break tags and paragraph breaks.
_MARKER = re.compile(
    r"(?P<pause>\[\s*pause\b[^\]]*\])"  # [pause ...]
    r"|(?P<break><\s*break\b[^>]*>)"  # <break .../>
    r"|(?P<close></\s*break\s*>)"  # the closing tag of <break ...></break>: says nothing more
    r"|(?P<para>\n[^\S\n]*\n\s*)",  # a line holding only whitespace: paragraph break
    re.IGNORECASE,
)
_PAUSE_BODY = re.compile(r"^\[\s*pause\b\s*(?P<value>[^\]]*?)\s*\]$", re.IGNORECASE)
_BREAK_TIME = re.compile(r"""\btime\s*=\s*(?P<q>["'])(?P<value>[^"']*)(?P=q)""", re.IGNORECASE)
_DURATION = re.compile(
    r"^(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*"
    r"(?P<unit>ms|msec|milliseconds?|s|secs?|seconds?|m|mins?|minutes?)?$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0}


def _invalid(marker: str, why: str) -> InvalidJob:
    return InvalidJob(f"{_FIELD}: invalid pause marker {marker!r}: {why}")


def _marker_seconds(marker: str, value: str, max_pause_s: float) -> float:
    match = _DURATION.match(value.strip())
    if match is None:
        raise _invalid(marker, "expected a duration such as 5s, 1.5 s, 2m or 500ms")
    seconds = float(match["num"])
    unit = (match["unit"] or "s").lower()
    # "ms"/"msec"/"milliseconds" -> ms, "m"/"min"/"minutes" -> m, everything else -> s
    key = "ms" if unit.startswith(("ms", "mil")) else "m" if unit.startswith("m") else "s"
    seconds *= _UNIT_SECONDS[key]
    if seconds < 0:
        raise _invalid(marker, "a pause cannot be negative")
    if not math.isfinite(seconds) or seconds > max_pause_s:
        raise _invalid(marker, f"longer than the {max_pause_s:g} s maximum")
    return seconds


def _normalize(text: str) -> str:
    return " ".join(text.split())


def parse_script(
    text: str,
    *,
    paragraph_pause_s: float = 2.0,
    max_pause_s: float = 600.0,
) -> list[Segment]:
    """Split a script into ``Speech`` and ``Pause`` segments, in order.

    Adjacent pauses are summed into one; leading and trailing pauses are kept (the caller decides what
    to do with them); speech that is empty after whitespace normalization, or holds only punctuation,
    is dropped.

    Raises:
        InvalidJob: a pause marker is malformed, negative or longer than ``max_pause_s``; the message
            names ``projectData.scriptText`` and quotes the marker.
    """
    segments: list[Segment] = []

    def add_speech(raw: str) -> None:
        spoken = _normalize(raw)
        # Stray punctuation left between two markers ("<break .../>.") has nothing to say; sending it to
        # a provider costs a request and returns silence or an error.
        if any(ch.isalnum() for ch in spoken):
            segments.append(Speech(spoken))

    def add_pause(seconds: float) -> None:
        if seconds <= 0:
            return
        if segments and isinstance(segments[-1], Pause):
            segments[-1] = Pause(segments[-1].seconds + seconds)
        else:
            segments.append(Pause(seconds))

    # Windows and old-Mac line endings would hide blank lines from the paragraph rule.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    pos = 0
    for match in _MARKER.finditer(text):
        add_speech(text[pos : match.start()])
        pos = match.end()
        marker = match.group()
        if match["para"] is not None:
            add_pause(paragraph_pause_s)
        elif match["close"] is not None:
            continue
        elif match["pause"] is not None:
            body = _PAUSE_BODY.match(marker)
            value = body["value"] if body else ""
            add_pause(_marker_seconds(marker, value, max_pause_s))
        else:
            attr = _BREAK_TIME.search(marker)
            if attr is None:
                raise _invalid(marker, 'expected a time attribute such as time="1.5s"')
            add_pause(_marker_seconds(marker, attr["value"], max_pause_s))
    add_speech(text[pos:])
    return segments


# ------------------------------------------------------------------------------------------- chunking

# Words ending in "." that usually do not end a sentence. Lower-case, without the final dot. Kept short
# on purpose: words that also end sentences in spoken scripts ("no.", "min.") are left out.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al approx dept fig inc ltd vol a.m p.m u.s u.k".split()
)
_CLOSERS = "\"'”’)]}»"
_OPENERS = "\"'“‘([{«"
_CLAUSE_END = (",", ";", ":", "—", "–")
_DASHES = frozenset({"—", "–", "-", "--"})


def _ends_sentence(word: str, next_word: str | None) -> bool:
    core = word.rstrip(_CLOSERS)
    if core.endswith(("!", "?")):
        return True
    if not core.endswith((".", "…")):
        return False
    if next_word is None:
        return True
    # "e.g. this" or "so... and": a lower-case continuation means the dot did not end the sentence.
    if next_word.lstrip(_OPENERS)[:1].islower():
        return False
    if core.endswith(("...", "…")):
        return True
    stem = core[:-1].lstrip(_OPENERS)
    if stem.lower() in _ABBREVIATIONS:
        return False
    # A capital initial, as in "J. R. R. Tolkien" ("I." is the pronoun far more often than an initial).
    return not (len(stem) == 1 and stem.isupper() and stem != "I")


def _split_sentences(words: list[str]) -> list[list[str]]:
    sentences: list[list[str]] = []
    current: list[str] = []
    for i, word in enumerate(words):
        current.append(word)
        if _ends_sentence(word, words[i + 1] if i + 1 < len(words) else None):
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def _split_clauses(words: list[str]) -> list[list[str]]:
    clauses: list[list[str]] = []
    current: list[str] = []
    for i, word in enumerate(words):
        # A free-standing dash opens the next clause; a trailing comma, colon or dash closes this one.
        if word in _DASHES and current:
            clauses.append(current)
            current = []
        current.append(word)
        if word.rstrip(_CLOSERS).endswith(_CLAUSE_END) and word not in _DASHES and i + 1 < len(words):
            clauses.append(current)
            current = []
    if current:
        clauses.append(current)
    return clauses


def _length(words: list[str]) -> int:
    return sum(map(len, words)) + len(words) - 1


def _pack(pieces: list[list[str]], limit: int) -> list[str]:
    """Greedily join word groups (each of which fits) into chunks of at most ``limit`` characters."""
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        text = " ".join(piece)
        if current and len(current) + 1 + len(text) <= limit:
            current = f"{current} {text}"
        else:
            if current:
                chunks.append(current)
            current = text
    if current:
        chunks.append(current)
    return chunks


def _fit_words(words: list[str], limit: int) -> list[list[str]]:
    """Word groups that each fit ``limit``; a word longer than ``limit`` is cut into pieces."""
    pieces: list[list[str]] = []
    for word in words:
        if len(word) <= limit:
            pieces.append([word])
        else:
            pieces.extend([word[i : i + limit]] for i in range(0, len(word), limit))
    return pieces


def _fit_sentence(sentence: list[str], limit: int) -> list[str]:
    """Chunks for one sentence longer than ``limit``: clause boundaries first, then spaces."""
    pieces: list[list[str]] = []
    for clause in _split_clauses(sentence):
        if _length(clause) <= limit:
            pieces.append(clause)
        else:
            pieces.extend(_fit_words(clause, limit))
    return _pack(pieces, limit)


def chunk_text(text: str, limit: int) -> list[str]:
    """Split text into chunks of at most ``limit`` characters for a TTS request each.

    Whole sentences are packed greedily. A sentence longer than ``limit`` gets chunks of its own, split
    at clause boundaries (``, ; : — –``) and then at spaces; only a single word longer than ``limit`` is
    cut mid-word. Except for such cut words, ``" ".join(chunks)`` equals the whitespace-normalized text.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1 character, got {limit!r}")
    words = text.split()
    chunks: list[str] = []
    pending: list[list[str]] = []  # consecutive sentences that fit, packed together
    for sentence in _split_sentences(words):
        if _length(sentence) <= limit:
            pending.append(sentence)
            continue
        # A long sentence starts and ends its own chunks so each split stays inside one sentence.
        chunks.extend(_pack(pending, limit))
        pending = []
        chunks.extend(_fit_sentence(sentence, limit))
    chunks.extend(_pack(pending, limit))
    return chunks
