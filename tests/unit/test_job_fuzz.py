"""Payload fuzzing: every generated document parses to a valid job or fails with ``InvalidJob`` naming the field.

Over a thousand documents (tests/payloads.py): valid jobs with hostile values at known and unknown JSON paths
(wrong types, huge strings, unicode, NaN/infinities, negative and enormous durations, nested garbage) and
documents that are not objects at all. Nothing else may escape ``parse_job``; messages stay one bounded line
that names each bad field by its JSON path and quotes what was given (truncated when huge).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from pydantic import ValidationError

from mindscript.errors import InvalidJob
from mindscript.job import JOB_ID_PATTERN, QUOTE_LIMIT, RenderJob, parse_job
from tests.payloads import deep, job_documents, single_field_mutations

LIMIT_MIN = 60.0
FUZZ = dict(
    deadline=None, database=None, derandomize=os.environ.get("CI") == "true",  # CI: no flaky seeds
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(job)"


def check_invalid(exc: InvalidJob) -> None:
    """The message contract, against the validation errors it was built from."""
    message = exc.message
    assert isinstance(exc.__cause__, ValidationError)
    errors = exc.__cause__.errors(include_url=False)
    assert errors and message and "\n" not in message and "\r" not in message  # one log line, no injection
    assert len(message) <= len(errors) * (2 * QUOTE_LIMIT + 200), len(message)
    assert exc.code == "INVALID_JOB" and exc.stage == "INITIALIZING"
    for err in errors:
        path = _path(err["loc"])
        assert f"{path}: " in message, (path, message)
        line = message[message.index(f"{path}: "):]
        if err["type"] == "missing":
            continue
        assert "(got " in line, line
        value = err.get("input")
        if isinstance(value, str) and len(value) > 4 * QUOTE_LIMIT:
            assert value not in message and "...)" in line  # huge: quoted, truncated
        elif isinstance(value, str | float | bool) or value is None or (
                isinstance(value, int) and abs(value) < 10**50):
            shown = repr(value)
            if len(shown) <= QUOTE_LIMIT and "must lie inside" not in line:
                assert f"(got {shown})" in line, (shown, line[:300])


def check_valid(job: RenderJob) -> None:
    project = job.project
    assert JOB_ID_PATTERN.fullmatch(job.id)
    assert math.isfinite(project.duration_min) and 0.0 < project.duration_min <= LIMIT_MIN
    layers = project.layers
    for value in (layers.voice.speed, layers.solfeggio.hz, layers.binaural.beat, layers.binaural.carrier_hz,
                  *(getattr(layers, k).gain_db or 0.0 for k in ("voice", "background", "solfeggio", "binaural"))):
        assert isinstance(value, float) and math.isfinite(value)
    assert len(project.script_text) <= 200_000
    again = parse_job(job.model_dump_json(by_alias=True), max_duration_minutes=LIMIT_MIN)
    assert again == job  # a valid job round-trips through its own JSON


def outcome(doc: Any) -> str:
    try:
        job = parse_job(doc, max_duration_minutes=LIMIT_MIN)
    except InvalidJob as exc:
        check_invalid(exc)
        return "invalid"
    check_valid(job)
    return "valid"


def test_a_thousand_hostile_documents_parse_or_fail_with_the_field_named() -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=1000, **FUZZ)
    @given(job_documents())
    def run(doc: Any) -> None:
        seen[outcome(doc)] += 1

    run()
    assert sum(seen.values()) >= 1000, seen
    assert seen["invalid"] >= 500 and seen["valid"] >= 20, seen  # both sides of the contract were exercised


def test_one_bad_field_is_the_field_the_message_names() -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=300, **FUZZ)
    @given(single_field_mutations())
    def run(case: tuple[dict[str, Any], str, Any]) -> None:
        doc, path, _ = case
        try:
            parse_job(doc, max_duration_minutes=LIMIT_MIN)
        except InvalidJob as exc:
            check_invalid(exc)
            paths = [_path(e["loc"]) for e in exc.__cause__.errors()]  # type: ignore[union-attr]
            leaf = path.rsplit(".", 1)[-1]
            # the error sits at the changed field or below it, or at its object when a model rule (the
            # binaural band check) judged it, and then the line names the field
            assert any(p == path or p.startswith(path + ".") or (path.startswith(p + ".") and leaf in exc.message)
                       for p in paths), (path, exc.message[:300])
            seen["invalid"] += 1
        else:
            seen["valid"] += 1

    run()
    assert sum(seen.values()) >= 300 and seen["invalid"] >= 200, seen


def test_json_text_documents_go_through_the_same_contract() -> None:
    """The CLI reads a file: JSON text (and bytes) are validated by the same model, same messages."""
    seen: Counter[str] = Counter()

    @settings(max_examples=200, **FUZZ)
    @given(job_documents(json_safe=True))
    def run(doc: Any) -> None:
        try:
            text = json.dumps(doc)
        except RecursionError:  # the stdlib encoder cannot write it; deep JSON text is pinned below
            reject()
        seen[outcome(text)] += 1
        assert outcome(text.encode()) in ("valid", "invalid")

    run()
    assert sum(seen.values()) >= 200, seen


# -- the findings, pinned ----------------------------------------------------------------------------------
def _job(**project: Any) -> dict[str, Any]:
    return {"id": "fuzz-1", "payload": {"projectData": {"durationMin": 1, **project}}}


@pytest.mark.parametrize("job_id", ["job-1\n", "job\n-1", "a" * 129, "-job", "job/../x", "job\x00", "ｊｏｂ", ""])
def test_unsafe_job_ids_are_refused(job_id: str) -> None:
    with pytest.raises(InvalidJob, match=r"^id: must be 1-128 characters") as info:
        parse_job(dict(_job(), id=job_id))
    assert "\n" not in info.value.message


def test_a_boolean_is_not_a_number() -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job(_job(durationMin=True, layers={"solfeggio": {"hz": False}}))
    assert info.value.message == (
        "payload.projectData.durationMin: must be a number, not a boolean (got True); "
        "payload.projectData.layers.solfeggio.hz: must be a number, not a boolean (got False)")


@pytest.mark.parametrize("value", [
    deep(sys.getrecursionlimit() * 3),                 # json.dumps would hit the recursion limit
    deep(5000, kind="dict"),
    10**5000,                                          # int repr refuses past 4300 digits
    {(1, 2): "tuple key"},                             # json.dumps refuses non-string keys
    "x" * 5_000_000,                                   # quoted in 120 characters, not 5 MB
    float("nan"), float("-inf"), "1e400", "NaN",
], ids=["deep-list", "deep-dict", "int-5001-digits", "tuple-key", "5MB-string", "nan", "-inf", "1e400", "NaN"])
def test_any_value_is_quoted_in_bounded_space(value: Any) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job(_job(durationMin=value), max_duration_minutes=LIMIT_MIN)
    message = info.value.message
    assert message.startswith("payload.projectData.durationMin: ") and "(got " in message
    assert len(message) < 300


@pytest.mark.parametrize("text", ['{"id": "j", "payload": ' + "[" * 5000 + "]" * 5000 + "}",
                                  '{"id": "j", "payload": {"projectData": {"durationMin": ' + "9" * 5000 + "}}}",
                                  '{"id": "j", "payload": {"projectData": {"durationMin": 1e5000}}}',
                                  '{"id": "j", "payload": {"projectData": {"durationMin": NaN}}}',
                                  '{"id": "j"', "", "\ud800", '{"id": "\u0000"}'])
def test_hostile_json_text_fails_as_invalid_job(text: str) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job(text, max_duration_minutes=LIMIT_MIN)
    check_invalid(info.value)


def test_enormous_and_negative_durations_name_the_limit() -> None:
    for value, shown in ((1e308, "1e+308"), (-5, "-5"), (0, "0"), (60.0001, "60.0001"), (10**30, str(10**30))):
        with pytest.raises(InvalidJob) as info:
            parse_job(_job(durationMin=value), max_duration_minutes=LIMIT_MIN)
        assert info.value.message == (f"payload.projectData.durationMin: must be greater than 0 and at most 60 "
                                      f"minutes (got {shown})"), info.value.message
