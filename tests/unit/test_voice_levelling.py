"""Voice-stem levelling: the analysis as heard, the gain fit, and the single write-and-measure pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from examples.make_assets import speech_like
from mindscript import audio_io, voice
from mindscript.dsp import ducking, loudness, truepeak

SR = 44100
TARGET = -16.0
PEAK = -3.0


def _stem(tmp_path: Path, seconds: float) -> Path:
    return audio_io.write_wav_f32(tmp_path / "voice.wav", speech_like(seconds, SR), SR)


def test_analysis_reads_the_mono_stem_as_heard_in_both_channels(tmp_path: Path) -> None:
    path = _stem(tmp_path, 30.0)
    x = np.concatenate(list(audio_io.iter_blocks(path, 1 << 20)))[:, :1]
    hop = int(round(voice.HOP_S * SR))
    # The straightforward reading: the stem duplicated into L and R, measured in one piece.
    stereo = loudness.meter_update(loudness.meter_init(SR, 2), np.repeat(x, 2, axis=1))
    analysis = voice._analyse(path, SR)
    assert analysis.frames == x.shape[0]
    assert analysis.lufs == loudness.meter_result(stereo).integrated_lufs
    assert np.array_equal(analysis.speech_blocks, loudness.gated_blocks(stereo))
    assert np.array_equal(analysis.activity, ducking.speech_activity(x, SR, hop))
    assert abs(analysis.true_peak_db - truepeak.true_peak_dbtp(x, SR)) < 1e-5  # FFT rounding of other windows


def _fed(blocks: list[np.ndarray]) -> voice._StemAnalysis:
    """The stem analysis of ``blocks`` fed one by one (the meter, the true peak and the speech-activity hops)."""
    meter = loudness.meter_init(SR, 1, weights=voice._HEARD_WEIGHTS)
    peak = truepeak.truepeak_init(1)
    hops = voice._Hops(SR)
    for block in blocks:
        meter = loudness.meter_update(meter, block)
        peak = truepeak.truepeak_update(peak, block)
        hops.add(block)
    return voice._StemAnalysis(frames=sum(len(b) for b in blocks), lufs=loudness.meter_result(meter).integrated_lufs,
                               true_peak_db=truepeak.truepeak_db(peak), activity=hops.result(),
                               speech_blocks=loudness.gated_blocks(meter))


@pytest.mark.parametrize("sizes", [[1000], [65536, 441], [7, 12345, 4410]])
def test_stem_analysis_does_not_depend_on_block_sizes(tmp_path: Path, sizes: list[int]) -> None:
    x = speech_like(12.3, SR)  # not a whole number of hops
    whole = _fed([x])
    blocks = []
    i = k = 0
    while i < x.shape[0]:
        blocks.append(x[i : i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    blocked = _fed(blocks)
    assert blocked.frames == whole.frames and blocked.lufs == whole.lufs
    assert abs(blocked.true_peak_db - whole.true_peak_db) < 1e-5
    assert np.array_equal(blocked.activity, whole.activity)
    assert np.array_equal(blocked.speech_blocks, whole.speech_blocks)


def test_peaky_stem_is_levelled_onto_the_target_under_the_peak(tmp_path: Path) -> None:
    path = _stem(tmp_path, 60.0)
    before = voice._analyse(path, SR)
    assert before.true_peak_db + (TARGET - before.lufs) > PEAK + 3  # needs real limiting
    after = voice.level_stem(path, before, sample_rate=SR, target_lufs=TARGET, peak_dbtp=PEAK)
    assert abs(after.lufs - TARGET) <= voice.LEVEL_TOLERANCE_LU / 2
    # What the single write-and-measure pass reported is what the file now holds.
    reread = voice._analyse(path, SR)
    assert reread.frames == after.frames == before.frames
    assert abs(reread.lufs - after.lufs) < 1e-9
    assert np.array_equal(reread.activity, after.activity)
    assert np.array_equal(reread.speech_blocks, after.speech_blocks)
    assert reread.true_peak_db <= PEAK + 0.01


def test_stem_under_the_peak_is_left_alone(tmp_path: Path) -> None:
    t = np.arange(20 * SR) / SR
    tone = 0.05 * np.sin(2 * np.pi * 300 * t) * ((t % 3.0) < 2.0)  # a crest factor of 3 dB: no limiting needed
    path = audio_io.write_wav_f32(tmp_path / "voice.wav", tone.astype(np.float32)[:, None], SR)
    before = voice._analyse(path, SR)
    assert before.true_peak_db + (TARGET - before.lufs) <= PEAK
    data = path.read_bytes()
    assert voice.level_stem(path, before, sample_rate=SR, target_lufs=TARGET, peak_dbtp=PEAK) is before
    assert path.read_bytes() == data


@pytest.mark.parametrize("seconds", [4.5, 6.0, 9.0])
def test_short_stem_is_levelled_onto_the_target(tmp_path: Path, seconds: float) -> None:
    """A few seconds of speech (an uploaded greeting): the fit sees all of it, so the stem lands on the target."""
    path = audio_io.write_wav_f32(tmp_path / "voice.wav", speech_like(seconds, SR) * 0.3, SR)
    before = voice._analyse(path, SR)
    assert before.true_peak_db + (TARGET - before.lufs) > PEAK  # it needs limiting
    after = voice.level_stem(path, before, sample_rate=SR, target_lufs=TARGET, peak_dbtp=PEAK)
    assert abs(after.lufs - TARGET) <= voice.LEVEL_TOLERANCE_LU / 4


def _one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(voice, "STEM_PARTS", 1)


def test_long_stem_analysed_in_two_stretches_reads_as_one_pass(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = _stem(tmp_path, 150.3)  # two stretches, cut at a whole second; not a whole number of hops
    info = audio_io.read_info(path)
    assert len(voice._stem_stretches(info)) == 2
    split = voice._analyse(path, SR)
    _one_pass(monkeypatch)
    assert len(voice._stem_stretches(info)) == 1
    whole = voice._analyse(path, SR)
    assert split.frames == whole.frames == info.frames
    assert abs(split.lufs - whole.lufs) < 1e-6
    assert abs(split.true_peak_db - whole.true_peak_db) < 1e-5
    assert np.array_equal(split.activity, whole.activity)
    assert np.array_equal(split.speech_blocks, whole.speech_blocks)


def test_long_stem_levelled_in_two_stretches_matches_one_pass(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The later stretch's limiter starts early; from the cut on, its gain is the single pass's."""
    results = {}
    for name in ("split", "whole"):
        (tmp_path / name).mkdir()
        path = _stem(tmp_path / name, 150.0)
        before = voice._analyse(path, SR)
        assert before.true_peak_db + (TARGET - before.lufs) > PEAK + 3  # heavy limiting across the cut
        if name == "whole":
            _one_pass(monkeypatch)
        after = voice.level_stem(path, before, sample_rate=SR, target_lufs=TARGET, peak_dbtp=PEAK)
        samples = np.concatenate(list(audio_io.iter_blocks(path, 1 << 20)))
        results[name] = (after, samples, voice._analyse(path, SR))
    (split, xs, reread), (whole, xw, _) = results["split"], results["whole"]
    assert xs.shape == xw.shape
    assert float(np.max(np.abs(xs - xw))) < 1e-6  # the cut (75 s) is inaudible: no difference at all
    assert abs(split.lufs - whole.lufs) < 1e-6
    assert np.array_equal(split.activity, whole.activity)
    assert np.array_equal(split.speech_blocks, whole.speech_blocks)
    # what the level pass measured is what it wrote
    assert abs(reread.lufs - split.lufs) < 1e-6 and np.array_equal(reread.activity, split.activity)
    assert reread.true_peak_db <= PEAK + 0.01


def _timeless(path: Path) -> bytes:
    """A WAV file's bytes with the PEAK chunk's time stamp (libsndfile writes the current second) zeroed."""
    raw = bytearray(path.read_bytes())
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE"
    at = 12
    while at + 8 <= len(raw):
        size = int.from_bytes(raw[at + 4:at + 8], "little")
        if raw[at:at + 4] == b"PEAK":
            raw[at + 12:at + 16] = bytes(4)  # version (4 bytes), then the time stamp
        at += 8 + size + (size & 1)
    return bytes(raw)


@pytest.mark.parametrize(("subtype", "take"), [("FLOAT", "speech"), ("PCM_16", "speech"), ("PCM_24", "hum")])
def test_a_plain_mono_recording_is_read_in_place_with_the_same_stem_as_its_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, subtype: str, take: str) -> None:
    import soundfile as sf

    # 16- and 24-bit PCM read as float32 exactly. Speech needs levelling; a steady hum (3 dB crest) peaks
    # under the ceiling once normalized, so its stem is a plain copy.
    src = tmp_path / "take.wav"
    t = np.arange(int(150.0 * SR)) / SR
    hum = (0.05 * np.sin(2 * np.pi * 220.0 * t))[:, None].astype(np.float32)
    sf.write(src, speech_like(150.0, SR) if take == "speech" else hum, SR, subtype=subtype)
    assert audio_io.reads_as_stem(src, sample_rate=SR, max_duration_s=600)
    stems = {}
    for way in ("in place", "copied"):
        if way == "copied":
            monkeypatch.setattr(audio_io, "reads_as_stem", lambda *a, **k: False)
        ws = tmp_path / way.replace(" ", "-")
        ws.mkdir()
        stems[way] = voice.prepare_recording(src, ws, sample_rate=SR, max_duration_s=600, target_lufs=TARGET,
                                             peak_dbtp=PEAK)
    a, b = stems["in place"], stems["copied"]
    assert _timeless(Path(a.path)) == _timeless(Path(b.path))  # the stem, bit for bit
    assert (a.measured_lufs, a.frames, a.speech_s) == (b.measured_lufs, b.frames, b.speech_s)
    with np.load(a.analysis_path) as x, np.load(b.analysis_path) as y:
        assert all(np.array_equal(x[k], y[k]) for k in ("activity", "speech_blocks"))
    stem = np.concatenate(list(audio_io.iter_blocks(Path(a.path), 1 << 20)))
    original = np.concatenate(list(audio_io.iter_blocks(src, 1 << 20)))
    if take == "speech":  # levelled onto the target
        assert abs(a.measured_lufs - TARGET) < voice.LEVEL_TOLERANCE_LU and not np.array_equal(stem, original)
    else:  # left as it was: the master applies the gain
        assert a.measured_lufs < TARGET - 10 and np.array_equal(stem, original)
    assert src.exists()  # the upload itself is never rewritten


def test_what_cannot_stand_in_for_the_stem_is_decoded_first(tmp_path: Path) -> None:
    import soundfile as sf

    x = speech_like(5.0, SR)
    cases = {"stereo.wav": (np.repeat(x, 2, axis=1), SR, "WAV"), "rate.wav": (x, 48000, "WAV"),
             "lossy.mp3": (x, SR, "MP3"), "empty.wav": (x[:0], SR, "WAV")}
    for name, (data, rate, fmt) in cases.items():
        sf.write(tmp_path / name, data, rate, format=fmt)
        assert not audio_io.reads_as_stem(tmp_path / name, sample_rate=SR, max_duration_s=600), name
    sf.write(tmp_path / "long.wav", x, SR)
    assert audio_io.reads_as_stem(tmp_path / "long.wav", sample_rate=SR, max_duration_s=5.0)
    assert not audio_io.reads_as_stem(tmp_path / "long.wav", sample_rate=SR, max_duration_s=3.0)
    assert not audio_io.reads_as_stem(tmp_path / "missing.wav", sample_rate=SR)
