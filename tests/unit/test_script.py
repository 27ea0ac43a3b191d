"""Script parsing (pause markers, paragraphs, errors) and chunking properties."""

from __future__ import annotations

import random

import pytest

from mindscript.errors import InvalidJob
from mindscript.script import Pause, Speech, chunk_text, parse_script


@pytest.mark.parametrize(
    ("marker", "seconds"),
    [
        ("[pause 5s]", 5.0),
        ("[pause 1.5 s]", 1.5),
        ("[pause 2m]", 120.0),
        ("[pause 500ms]", 0.5),
        ("[PAUSE 3 Seconds]", 3.0),
        ("[ pause 4 ]", 4.0),
        ("[Pause 1 min]", 60.0),
        ('<break time="1.5s"/>', 1.5),
        ('<break time="500ms" />', 0.5),
        ("<BREAK TIME='2s'/>", 2.0),
        ('<break time="0.25 s"></break>', 0.25),
    ],
)
def test_every_marker_form(marker: str, seconds: float) -> None:
    segments = parse_script(f"Breathe in. {marker} Breathe out.")
    assert segments[0] == Speech("Breathe in.")
    assert isinstance(segments[1], Pause)
    assert segments[1].seconds == pytest.approx(seconds)
    assert segments[2:] == [Speech("Breathe out.")]


def test_paragraphs_merging_and_whitespace() -> None:
    text = (
        "  Welcome.\n  Settle   in.\n\n"
        'Notice your breath. [pause 5s][pause 1.5 s]<break time="500ms"/>\n'
        "Let it go.\r\n\r\n\r\n"
        "[pause 3s]"
    )
    assert parse_script(text, paragraph_pause_s=2.5) == [
        Speech("Welcome. Settle in."),
        Pause(2.5),
        Speech("Notice your breath."),
        Pause(7.0),
        Speech("Let it go."),
        Pause(5.5),  # paragraph 2.5 + explicit 3: every marker counts, summed
    ]


def test_leading_and_trailing_pauses_are_kept_and_empty_speech_dropped() -> None:
    assert parse_script("[pause 2s]  Hello  [pause 1s] \n\n ") == [Pause(2.0), Speech("Hello"), Pause(3.0)]
    assert parse_script("   \n\n  ") == [Pause(2.0)]
    assert parse_script("") == []
    assert parse_script('Rest<break time="1s"/>.') == [Speech("Rest"), Pause(1.0)]  # lone "." dropped
    assert parse_script("A [pause 0s] B") == [Speech("A"), Speech("B")]


@pytest.mark.parametrize(
    "marker",
    [
        "[pause abc]",
        "[pause -5s]",
        "[pause 11m]",
        "[pause 601s]",
        "[pause]",
        "[pause 5 parsecs]",
        '<break time="soon"/>',
        "<break/>",
        '<break time="-1s"/>',
    ],
)
def test_malformed_markers_name_the_field_and_quote_the_marker(marker: str) -> None:
    with pytest.raises(InvalidJob) as err:
        parse_script(f"Breathe. {marker} Relax.")
    assert "projectData.scriptText" in err.value.message
    assert repr(marker) in err.value.message
    assert err.value.code == "INVALID_JOB"


def test_max_pause_is_configurable() -> None:
    assert parse_script("[pause 10m]", max_pause_s=600.0) == [Pause(600.0)]
    with pytest.raises(InvalidJob, match="30 s maximum"):
        parse_script("[pause 31s]", max_pause_s=30.0)


# ------------------------------------------------------------------------------------------- chunking


def test_chunks_pack_whole_sentences() -> None:
    text = "Dr. Smith said hello. This is e.g. a test! Is it? Yes... it is. So do I. The end."
    assert chunk_text(text, 40) == [
        "Dr. Smith said hello.",
        "This is e.g. a test! Is it?",
        "Yes... it is. So do I. The end.",
    ]
    assert chunk_text(text, 1000) == [text]
    assert chunk_text("  \n ", 10) == []


def test_long_sentence_splits_at_clauses_then_spaces_then_inside_words() -> None:
    assert chunk_text("One, two, three; four: five — six, seven eight nine ten eleven twelve.", 20) == [
        "One, two, three;",
        "four: five — six,",
        "seven eight nine ten",
        "eleven twelve.",
    ]
    assert chunk_text("Short one. Supercalifragilisticexpialidocious is long.", 10) == [
        "Short one.",
        "Supercalif",
        "ragilistic",
        "expialidoc",
        "ious is",
        "long.",
    ]


def test_long_sentence_gets_its_own_chunks() -> None:
    chunks = chunk_text("Hi. Now " + "word " * 30 + "end. Bye.", 40)
    assert chunks[0] == "Hi."
    assert chunks[-1] == "Bye."


WORDS = ["breathe", "in", "slowly", "relax", "your", "shoulders", "and", "notice", "the", "warmth",
         "Dr.", "e.g.", "Mr.", "J.", "calm", "O'Neill", "—", "–", "well-being", "…", "ok"]  # fmt: skip
ENDINGS = [".", "!", "?", ",", ";", ":", "...", "", "", "", '."', "?)"]


def random_text(rng: random.Random, max_word: int) -> str:
    parts = []
    for _ in range(rng.randint(0, 120)):
        if rng.random() < 0.05:
            word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, max_word)))
        else:
            word = rng.choice(WORDS)
        parts.append(word + rng.choice(ENDINGS))
        parts.append(rng.choice([" ", " ", "  ", "\n", "\t ", "\n\n"]))
    return "".join(parts)


@pytest.mark.parametrize("seed", range(400))
def test_chunk_properties(seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.choice([1, 5, 12, 25, 40, 80, 200, 5000])
    text = random_text(rng, max_word=rng.choice([limit, 3 * limit]))
    normalized = " ".join(text.split())
    chunks = chunk_text(text, limit)
    assert all(0 < len(c) <= limit for c in chunks)
    assert all(c == c.strip() and "  " not in c for c in chunks)
    if all(len(w) <= limit for w in normalized.split()):
        assert " ".join(chunks) == normalized
        # No word was split: every chunk is a run of whole words.
        words = normalized.split()
        assert sum(len(c.split()) for c in chunks) == len(words)
    else:
        # Only over-long words are cut; gluing the cut pieces back restores the text.
        assert "".join(chunks).replace(" ", "") == normalized.replace(" ", "")
        pieces = [w for c in chunks for w in c.split()]
        for piece in pieces:
            assert piece in normalized


def test_chunk_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="0"):
        chunk_text("hello", 0)
