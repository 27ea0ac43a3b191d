"""Hypothesis strategies for job documents: valid ones, and valid ones with hostile values put in their fields.

``job_documents()`` draws a valid job and then applies a few mutations, each at a known JSON path of the
payload contract (ARCHITECTURE.md) or at an unknown one: wrong types, huge strings, unicode, NaN and
infinities, negative and enormous durations, numbers past float range, nested garbage, removed fields.
``json_safe=True`` keeps to what a jsonb column can hold (no NaN or infinity, no NUL, no lone surrogates),
for documents that go through Postgres.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

# Every JSON path of the contract, parents before children.
NODES: tuple[str, ...] = (
    "payload", "payload.projectData", "payload.projectData.layers", "payload.projectData.layers.voice",
    "payload.projectData.layers.background", "payload.projectData.layers.solfeggio",
    "payload.projectData.layers.binaural", "payload.outputOptions",
)
LEAVES: tuple[str, ...] = (
    "id", "payload.type", "payload.projectData.scriptText", "payload.projectData.voiceRef",
    "payload.projectData.durationMin",
    *(f"payload.projectData.layers.voice.{k}"
      for k in ("enabled", "gainDb", "provider", "voiceCode", "model", "speed", "instructions")),
    *(f"payload.projectData.layers.background.{k}" for k in ("enabled", "gainDb", "trackUrl", "loop")),
    *(f"payload.projectData.layers.solfeggio.{k}" for k in ("enabled", "gainDb", "hz")),
    *(f"payload.projectData.layers.binaural.{k}" for k in ("enabled", "gainDb", "band", "beatHz", "carrierHz")),
    *(f"payload.outputOptions.{k}" for k in ("format", "quality", "storageLocation", "sampleRate")),
)
PATHS = NODES + LEAVES

FLOAT_EDGES = (0.0, -0.0, 1e-300, 5e-324, -5e-324, 1e308, -1e308, 2.0**53 + 1, -1.0, 60.000001, 1e15)
NON_FINITE = (float("nan"), float("inf"), float("-inf"))
# Python ints past what float() can hold, and past what int() will turn into a string (4300 digits), as
# exponents: Hypothesis would repr the values themselves when describing the strategy.
HUGE_INT_EXPONENTS = (400, 5000, 20)
NUMERIC_STRINGS = ("5", " 5 ", "1e400", "-1e400", "NaN", "nan", "Infinity", "-Infinity", "0x10", "1_000", "5min",
                   "", "٣", "१०")


def _text(json_safe: bool, max_size: int = 40) -> st.SearchStrategy[str]:
    # Lone surrogates and NUL cannot be stored in jsonb; elsewhere they are fair game.
    chars = (st.characters(exclude_categories=("Cs",), exclude_characters="\x00") if json_safe
             else st.characters(exclude_categories=()))
    return st.text(chars, max_size=max_size)


def _huge_text(json_safe: bool) -> st.SearchStrategy[str]:
    # Built outside Hypothesis' byte buffer: a short piece repeated, up to 250k characters (past the 200k
    # script limit).
    return st.builds(lambda piece, n: (piece * n)[: max(n, 1)], _text(json_safe, 4).filter(bool),
                     st.integers(min_value=1_000, max_value=250_000))


def _huge_ints() -> st.SearchStrategy[int]:
    return st.builds(lambda e, sign: sign * 10**e, st.sampled_from(HUGE_INT_EXPONENTS), st.sampled_from([1, -1]))


def _numbers(json_safe: bool) -> st.SearchStrategy[Any]:
    floats = st.floats(allow_nan=not json_safe, allow_infinity=not json_safe)
    edges = st.sampled_from(FLOAT_EDGES + (() if json_safe else NON_FINITE))
    return st.one_of(floats, st.integers(min_value=-(10**30), max_value=10**30), edges,
                     *(() if json_safe else (_huge_ints(),)))


def scalars(json_safe: bool = False) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), _numbers(json_safe), _text(json_safe),
                     st.sampled_from(NUMERIC_STRINGS))


def garbage(json_safe: bool = False) -> st.SearchStrategy[Any]:
    """Nested lists and objects of scalars."""
    return st.recursive(
        scalars(json_safe),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text(json_safe, 12), inner, max_size=4),
        max_leaves=16,
    )


def deep(depth: int, leaf: Any = 1, kind: str = "list") -> Any:
    """A value nested ``depth`` levels deep (built iteratively: no recursion here)."""
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def hostile(json_safe: bool = False) -> st.SearchStrategy[Any]:
    """A value that does not belong in a job field (or, by chance, one that does)."""
    return st.one_of(
        scalars(json_safe),
        garbage(json_safe),
        _huge_text(json_safe),
        st.builds(deep, st.integers(min_value=50, max_value=3_000), st.just(1), st.sampled_from(["list", "dict"])),
        st.builds(lambda n: list(range(n)), st.integers(min_value=1_000, max_value=50_000)),  # long arrays
    )


def durations(json_safe: bool = False) -> st.SearchStrategy[Any]:
    """Negative, zero, tiny, enormous, non-finite and stringly durations."""
    return st.one_of(
        st.floats(min_value=-1e308, max_value=0.0),
        st.floats(min_value=60.0, allow_infinity=not json_safe, allow_nan=False),
        st.floats(min_value=1e-12, max_value=60.0),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.sampled_from(FLOAT_EDGES + NUMERIC_STRINGS + (() if json_safe else NON_FINITE)),
        *(() if json_safe else (_huge_ints(),)),
    )


def _opt(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


def valid_jobs() -> st.SearchStrategy[dict[str, Any]]:
    """Jobs the contract accepts (with a 60-minute duration limit)."""
    gain = st.floats(min_value=-60.0, max_value=12.0)
    layers = _opt(
        voice=_opt(enabled=st.booleans(), gainDb=gain, provider=st.sampled_from(["local", "openai", "elevenlabs"]),
                   voiceCode=st.text(max_size=20), speed=st.floats(min_value=0.5, max_value=2.0)),
        background=_opt(enabled=st.booleans(), gainDb=gain, trackUrl=st.just("https://example.org/bed.mp3"),
                        loop=st.booleans()),
        solfeggio=_opt(enabled=st.booleans(), gainDb=gain,
                       hz=st.floats(min_value=1.0, max_value=19_999.0)),
        binaural=_opt(enabled=st.booleans(), band=st.just("theta"), beatHz=st.floats(min_value=4.0, max_value=8.0),
                      carrierHz=st.floats(min_value=40.0, max_value=1000.0)),
    )
    project = st.fixed_dictionaries(
        {"durationMin": st.floats(min_value=0.01, max_value=60.0)},
        optional={"scriptText": st.text(max_size=200), "voiceRef": st.sampled_from(["openai:nova", "local:en-us"]),
                  "layers": layers},
    )
    output = _opt(format=st.sampled_from(["mp3", "wav"]), quality=st.sampled_from(["low", "medium", "high"]),
                  storageLocation=st.sampled_from(["public", "private"]), sampleRate=st.sampled_from([44100, 48000]))
    payload = st.fixed_dictionaries({"projectData": project},
                                    optional={"type": st.just("render"), "outputOptions": output})
    job_id = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True)
    return st.fixed_dictionaries({"id": job_id, "payload": payload})


DELETE = object()  # a mutation that removes the field


def set_path(doc: dict[str, Any], path: str, value: Any) -> bool:
    """Put ``value`` at ``path`` (creating missing objects); False when a parent is not an object."""
    node: Any = doc
    *parents, last = path.split(".")
    for key in parents:
        if not isinstance(node, dict):
            return False
        node = node.setdefault(key, {})
    if not isinstance(node, dict):
        return False
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return True


def _mutation(json_safe: bool) -> st.SearchStrategy[tuple[str, Any]]:
    duration = st.tuples(st.just("payload.projectData.durationMin"), durations(json_safe))
    known = st.tuples(st.sampled_from(PATHS), st.one_of(hostile(json_safe), st.just(DELETE)))
    unknown = st.tuples(st.tuples(st.sampled_from(("",) + NODES), _text(json_safe, 12).filter(bool)).map(
        lambda t: f"{t[0]}.{t[1]}".lstrip(".")), garbage(json_safe))
    return st.one_of(duration, known, unknown)


@st.composite
def job_documents(draw: st.DrawFn, json_safe: bool = False, max_mutations: int = 3) -> Any:
    """A valid job with 1..max_mutations hostile changes, or now and then not an object at all."""
    if draw(st.integers(min_value=0, max_value=24)) == 0:
        return draw(hostile(json_safe))
    doc = copy.deepcopy(draw(valid_jobs()))
    for path, value in draw(st.lists(_mutation(json_safe), min_size=1, max_size=max_mutations)):
        set_path(doc, path, value)
    return doc


@st.composite
def single_field_mutations(draw: st.DrawFn, json_safe: bool = False) -> tuple[dict[str, Any], str, Any]:
    """(document, path, value): a valid job with one known field replaced by a hostile value."""
    doc = copy.deepcopy(draw(valid_jobs()))
    path = draw(st.sampled_from(PATHS))
    value = draw(durations(json_safe) if path.endswith("durationMin") else hostile(json_safe))
    set_path(doc, path, value)
    return doc, path, value
