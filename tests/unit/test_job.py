"""The job model: defaults, and every invalid field fails with its JSON path and the quoted value."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mindscript.errors import InvalidJob
from mindscript.job import MP3_BITRATES_KBPS, parse_job

SAMPLE = json.loads((Path(__file__).parents[2] / "examples" / "jobs" / "sample.json").read_text())


def _with(path: str, value: object) -> dict:
    job = copy.deepcopy(SAMPLE)
    node = job
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return job


def test_sample_parses_with_contract_names() -> None:
    job = parse_job(SAMPLE)
    assert job.project.duration_min == 3
    assert job.project.layers.binaural.beat == 7
    assert job.output.bitrate_kbps == MP3_BITRATES_KBPS["high"] == 192
    dumped = job.model_dump(by_alias=True)
    assert dumped["payload"]["projectData"]["layers"]["solfeggio"]["hz"] == 528
    assert parse_job(json.dumps(dumped)) == job  # round-trips through its own JSON


def test_minimal_payload_gets_defaults() -> None:
    job = parse_job({"id": "j1", "payload": {"projectData": {"durationMin": 1}}})
    assert job.output.format == "mp3" and job.output.storage_location == "private"
    assert job.project.layers.binaural.carrier_hz == 200.0
    assert job.project.layers.binaural.beat == 6.0  # theta band centre


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("payload.projectData.durationMin", 0, "payload.projectData.durationMin"),
        ("payload.projectData.durationMin", -5, "payload.projectData.durationMin"),
        ("payload.projectData.durationMin", 61, "payload.projectData.durationMin"),
        ("payload.projectData.durationMin", "ten", "payload.projectData.durationMin"),
        ("payload.projectData.layers.solfeggio.hz", 0, "payload.projectData.layers.solfeggio.hz"),
        ("payload.projectData.layers.solfeggio.hz", 25000, "payload.projectData.layers.solfeggio.hz"),
        ("payload.projectData.layers.binaural.band", "omega", "payload.projectData.layers.binaural.band"),
        ("payload.projectData.layers.binaural.beatHz", 12, "beatHz"),
        ("payload.projectData.layers.binaural.carrierHz", 30, "payload.projectData.layers.binaural.carrierHz"),
        ("payload.projectData.layers.binaural.carrierHz", 1200, "payload.projectData.layers.binaural.carrierHz"),
        ("payload.outputOptions.format", "ogg", "payload.outputOptions.format"),
        ("payload.outputOptions.quality", "ultra", "payload.outputOptions.quality"),
        ("payload.outputOptions.sampleRate", 22050, "payload.outputOptions.sampleRate"),
        ("payload.projectData.layers.background.gainDb", 40, "payload.projectData.layers.background.gainDb"),
        ("id", "../../etc/passwd", "id"),
    ],
)
def test_invalid_field_is_named_and_quoted(path: str, value: object, field: str) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job(_with(path, value), max_duration_minutes=60)
    message = info.value.message
    assert field in message
    assert repr(value) in message or str(value) in message
    assert info.value.code == "INVALID_JOB"


def test_nan_duration_is_rejected() -> None:
    with pytest.raises(InvalidJob, match=r"durationMin.*nan"):
        parse_job(_with("payload.projectData.durationMin", float("nan")))


def test_max_duration_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from mindscript.settings import get_settings

    monkeypatch.setenv("MAX_DURATION_MINUTES", "5")
    get_settings.cache_clear()
    try:
        with pytest.raises(InvalidJob, match="at most 5 minutes"):
            parse_job(_with("payload.projectData.durationMin", 6))
    finally:
        get_settings.cache_clear()


def test_unusual_solfeggio_warns_but_renders() -> None:
    job = parse_job(_with("payload.projectData.layers.solfeggio.hz", 432))
    assert any("432" in w and "classic" in w for w in job.warnings())
    assert parse_job(SAMPLE).warnings() == []


@pytest.mark.parametrize(("band", "beat"), [("delta", 0.5), ("alpha", 13), ("gamma", 100), ("beta", 13.5)])
def test_band_edges_are_inside(band: str, beat: float) -> None:
    job = _with("payload.projectData.layers.binaural", {"enabled": True, "band": band, "beatHz": beat})
    assert parse_job(job).project.layers.binaural.beat == beat
