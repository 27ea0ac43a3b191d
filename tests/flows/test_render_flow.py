"""The render_job flow end to end on a real Prefect server (test harness), real espeak, real ffmpeg."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from flows.render import render_job
from mindscript.errors import InvalidJob
from mindscript.job import parse_job
from tests.conftest import ROOT
from tests.measure import decode, lufs, true_peak_dbtp

SAMPLE = json.loads((ROOT / "examples" / "jobs" / "sample.json").read_text())


@pytest.fixture(scope="module")
def pad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples.make_assets import ambient_pad, write_mp3

    return write_mp3(tmp_path_factory.mktemp("assets") / "pad.mp3", ambient_pad(20.0))


def _job(pad: Path, **changes: object) -> dict:
    job = copy.deepcopy(SAMPLE)
    job["payload"]["projectData"]["durationMin"] = 0.75
    job["payload"]["projectData"]["layers"]["background"]["trackUrl"] = str(pad)
    for path, value in changes.items():
        node = job
        *parents, last = path.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return job


def _file(result: dict) -> Path:
    return Path(result["data"]["outputUrl"].removeprefix("file://"))


def test_voice_job_renders_to_target_and_ceiling(worker_env: Path, pad: Path) -> None:
    result = render_job(parse_job(_job(pad)))
    assert result["success"] is True
    meta = result["data"]["metadata"]
    path = _file(result)
    assert path.is_file() and path.is_relative_to(worker_env / "output")
    assert result["data"]["storagePath"].startswith("renders/") and path.suffix == ".mp3"
    samples, rate = decode(path)
    assert rate == 44100 and samples.shape[1] == 2
    # max(durationMin, lead-in + voice + tail): the sample script is longer than 45 s
    assert len(samples) / rate >= 45.0
    assert abs(len(samples) / rate - meta["durationSeconds"]) < 1e-3
    # Voice-anchored: the voice as delivered (the stem's own gating blocks, beds under it included) is on
    # target. The integrated figure of the whole file is lower: the long bed-only lead-in, pauses and tail
    # pass the relative gate. The meter's integrated figure must agree with pyloudnorm's.
    assert meta["loudness"]["mode"] == "voice"
    assert abs(meta["loudness"]["speechLufs"] - (-16.0)) <= 0.5
    assert abs(lufs(samples, rate) - meta["loudness"]["integratedLufs"]) <= 0.1
    assert true_peak_dbtp(samples) <= -1.0
    assert meta["layers"]["used"] == ["voice", "background", "solfeggio", "binaural"]
    assert meta["layers"]["skipped"] == [] and meta["warnings"] == []
    assert meta["tts"]["provider"] == "local" and meta["tts"]["chunks"] >= 1
    assert set(meta["timings"]) == {"INITIALIZING", "DOWNLOADING_ASSETS", "GENERATING_VOICE",
                                    "GENERATING_TONES", "MIXING_AUDIO", "NORMALIZING", "UPLOADING"}
    assert list((worker_env / "work").iterdir()) == []  # workspace removed after success


def test_program_mode_wav_without_voice(worker_env: Path, pad: Path) -> None:
    job = _job(pad, payload__projectData__layers__voice={"enabled": False},
               payload__outputOptions={"format": "wav", "sampleRate": 48000})
    job["payload"]["projectData"]["durationMin"] = 0.5
    result = render_job(parse_job(job))
    samples, rate = decode(_file(result))
    assert rate == 48000 and samples.shape == (30 * 48000, 2)
    assert abs(lufs(samples, rate) - (-16.0)) <= 0.5
    assert true_peak_dbtp(samples) <= -1.0
    assert result["data"]["metadata"]["loudness"]["mode"] == "program"


def test_missing_background_completes_with_warning(worker_env: Path, pad: Path) -> None:
    job = _job(pad, payload__projectData__layers__background={"enabled": True, "trackUrl": "nope/missing.mp3"})
    result = render_job(parse_job(job))
    meta = result["data"]["metadata"]
    assert result["success"] and "background" not in meta["layers"]["used"]
    assert meta["layers"]["skipped"][0]["layer"] == "background"
    assert "missing.mp3" in meta["layers"]["skipped"][0]["reason"]
    assert any("background" in w for w in meta["warnings"])


def test_failing_tone_is_skipped_not_fatal(worker_env: Path, pad: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mindscript import layers
    from mindscript.errors import InvalidAudio

    real = layers.plan_tone

    def flaky(kind, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if kind == "binaural":
            raise InvalidAudio("binaural generator exploded")
        return real(kind, *args, **kwargs)

    monkeypatch.setattr(layers, "plan_tone", flaky)
    result = render_job(parse_job(_job(pad)))
    meta = result["data"]["metadata"]
    assert meta["layers"]["used"] == ["voice", "background", "solfeggio"]
    assert meta["layers"]["skipped"] == [{"layer": "binaural", "reason": "binaural generator exploded"}]


def test_too_long_for_max_duration_fails_with_clear_error(worker_env: Path, pad: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from mindscript.errors import DurationTooLong
    from mindscript.settings import get_settings

    monkeypatch.setenv("MAX_DURATION_MINUTES", "0.8")
    get_settings.cache_clear()
    job = _job(pad)
    job["payload"]["projectData"]["scriptText"] *= 3  # the voice alone needs longer than 48 s
    with pytest.raises(DurationTooLong, match="MAX_DURATION_MINUTES") as info:
        render_job(parse_job(job))
    assert info.value.stage == "MIXING_AUDIO"
    assert list((worker_env / "work").iterdir()) == []  # workspace removed after failure


def test_invalid_job_never_reaches_the_flow() -> None:
    bad = copy.deepcopy(SAMPLE)
    bad["payload"]["projectData"]["layers"]["binaural"]["carrierHz"] = 5000
    with pytest.raises(InvalidJob, match=r"carrierHz.*5000"):
        parse_job(bad)


def test_quality_artifact_is_visible_in_prefect(worker_env: Path, pad: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    job = _job(pad, id="artifact-check")
    render_job(parse_job(job))
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["render-quality-artifact-check", "render-progress-artifact-check"])))
    by_key = {a.key: a for a in arts}
    assert "render-quality-artifact-check" in by_key and "render-progress-artifact-check" in by_key
    assert by_key["render-progress-artifact-check"].data == pytest.approx(100.0)
    table = json.loads(by_key["render-quality-artifact-check"].data)
    assert any(row["measure"] == "true peak" for row in table)
    assert np.isfinite(float(table[2]["value"].split()[0]))
