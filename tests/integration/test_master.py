"""The master stage on real files: tone frequencies by FFT, loop joins, ducking depth, placement, loudness."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mindscript import audio_io, layers, master, voice
from mindscript.job import parse_job
from mindscript.settings import Settings
from tests.measure import decode, lufs, peak_frequency, true_peak_dbtp

SR = 44100


def _job(duration_min: float, fmt: str = "wav", **layer_cfg: dict) -> object:
    return parse_job({"id": "t", "payload": {"projectData": {"durationMin": duration_min, "layers": layer_cfg},
                                             "outputOptions": {"format": fmt}}}, max_duration_minutes=60)


def _settings(**kw: object) -> Settings:
    return Settings(**kw)


def _render(tmp: Path, job, settings: Settings, *, stem=None, bed=None, tones=()) -> tuple[master.MasterOutcome, Path]:  # noqa: ANN001
    plan = master.plan_master(job, settings, voice=stem, bed=bed, tone_plans=tuple(tones), sample_rate=SR)
    out = tmp / f"out.{plan.fmt}"
    return master.master(plan, out), out


def test_tone_frequencies_by_fft_in_a_60s_render(tmp_path: Path) -> None:
    job = _job(1.0, solfeggio={"enabled": True, "hz": 528},
               binaural={"enabled": True, "band": "theta", "beatHz": 7, "carrierHz": 200})
    s = _settings()
    tones = [layers.plan_tone(k, job, s, sample_rate=SR) for k in ("solfeggio", "binaural")]
    outcome, out = _render(tmp_path, job, s, tones=tones)
    x, rate = decode(out)
    assert x.shape == (60 * SR, 2)
    left_sol, right_sol = peak_frequency(x[:, 0], rate, 528), peak_frequency(x[:, 1], rate, 528)
    left_car, right_car = peak_frequency(x[:, 0], rate, 200), peak_frequency(x[:, 1], rate, 207)
    assert abs(left_sol - 528) < 0.01 and abs(right_sol - 528) < 0.01
    assert abs(left_car - 200) < 0.01 and abs(right_car - 207) < 0.01
    assert abs((right_car - left_car) - 7) < 0.01
    # program mode: the tones alone are normalized to the target
    assert abs(lufs(x, rate) - s.target_lufs) <= 0.5
    assert true_peak_dbtp(x) <= -1.0
    assert outcome.plan.program_mode


def test_mp3_delivery_meets_target_and_ceiling(tmp_path: Path) -> None:
    job = _job(0.5, "mp3", solfeggio={"enabled": True, "hz": 396},
               binaural={"enabled": True, "band": "alpha"})
    s = _settings()
    tones = [layers.plan_tone(k, job, s, sample_rate=SR) for k in ("solfeggio", "binaural")]
    outcome, out = _render(tmp_path, job, s, tones=tones)
    x, rate = decode(out)
    assert x.shape == (30 * SR, 2)
    assert abs(lufs(x, rate) - s.target_lufs) <= 0.5
    assert true_peak_dbtp(x) <= -1.0
    assert abs(peak_frequency(x[:, 1], rate, 210.5, span=2) - 210.5) < 0.01  # alpha centre beat on 200 Hz


def _bed_file(tmp: Path, seconds: float, hz: float = 440.0) -> Path:
    t = np.arange(int(seconds * SR)) / SR
    sig = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return audio_io.write_wav_f32(tmp / "bed.wav", np.stack([sig, sig], 1), SR)


def test_looped_background_has_seamless_joins(tmp_path: Path) -> None:
    # 4.3 s of 440 Hz is not a whole number of cycles: a naive loop would click at every join.
    src = _bed_file(tmp_path, 4.3)
    job = _job(0.5, background={"enabled": True, "trackUrl": str(src)})
    s = _settings(loop_crossfade_s=0.5, background_fade_in_s=0.0, program_fade_out_s=0.0)
    ws = tmp_path / "ws"
    ws.mkdir()
    bed = layers.prepare_background(job, s, ws, sample_rate=SR, allow_local=True)
    outcome, out = _render(tmp_path, job, s, bed=bed)
    x, _ = decode(out)
    period = bed.frames - int(0.5 * SR)
    joins = [k * period for k in range(1, len(x) // period)]
    assert len(joins) >= 5
    step = np.abs(np.diff(x[:, 0]))
    typical = np.percentile(step[SR:2 * SR], 99.9)
    for j in joins:
        assert step[j - 200:j + 200].max() <= typical * 1.1
    # the crossfade region keeps the level (equal power of two uncorrelated-phase copies, within 3 dB)
    env = np.sqrt(np.convolve(x[:, 0] ** 2, np.ones(441) / 441, "same"))
    assert env[SR // 2:-SR // 2].min() > env[SR // 2:-SR // 2].max() * 10 ** (-3.5 / 20)


def _voice_stem(tmp: Path, on_s: float, off_s: float, total_s: float) -> voice.VoiceStem:
    t = np.arange(int(total_s * SR)) / SR
    gate = ((t % (on_s + off_s)) < on_s).astype(np.float32)
    sig = 0.3 * np.sin(2 * np.pi * 300 * t) * gate
    path = audio_io.write_wav_f32(tmp / "speech.wav", sig.astype(np.float32)[:, None], SR)
    ws = tmp / "ws"
    ws.mkdir(exist_ok=True)
    return voice.prepare_recording(path, ws, sample_rate=SR, max_duration_s=600, target_lufs=-16.0, peak_dbtp=-3.0)


def test_music_ducks_under_speech(tmp_path: Path) -> None:
    stem = _voice_stem(tmp_path, on_s=4.0, off_s=4.0, total_s=24.0)
    src = _bed_file(tmp_path, 60.0, hz=2000.0)
    job = _job(0.5, voice={"enabled": True}, background={"enabled": True, "trackUrl": str(src)})
    s = _settings(voice_lead_in_s=2.0, voice_tail_s=2.0, duck_depth_db=6.0, background_fade_in_s=0.0,
                  program_fade_out_s=0.0)
    bed = layers.prepare_background(job, s, tmp_path / "ws", sample_rate=SR, allow_local=True)
    outcome, out = _render(tmp_path, job, s, stem=stem, bed=bed)
    x, _ = decode(out)
    t = np.arange(len(x)) / SR

    def level_2k(a: float, b: float) -> float:
        seg = x[(t >= a) & (t < b), 0]
        n = len(seg)
        window = np.hanning(n)
        spec = np.abs(np.fft.rfft(seg * window)) / window.sum()  # amplitude, independent of length
        f = np.fft.rfftfreq(n, 1 / SR)
        return float(spec[np.argmin(np.abs(f - 2000))])

    lead = outcome.plan.voice_start_frame / SR
    during = level_2k(lead + 1.5, lead + 3.5)  # inside a 4 s speech burst, after the attack
    after = level_2k(lead + 6.5, lead + 7.9)  # late in the 4 s gap, after the release
    depth = 20 * np.log10(after / during)
    assert 5.0 <= depth <= 7.0


def test_voice_placement_and_duration_rule(tmp_path: Path) -> None:
    stem = _voice_stem(tmp_path, on_s=2.0, off_s=1.0, total_s=20.0)
    s = _settings(voice_lead_in_s=3.0, voice_tail_s=4.0)
    short = _job(0.1, voice={"enabled": True})  # 6 s asked, the voice needs 3 + 20 + 4
    plan = master.plan_master(short, s, voice=stem, bed=None, tone_plans=(), sample_rate=SR)
    assert plan.total_frames == pytest.approx(27 * SR, abs=SR // 100)
    plan = dataclasses.replace(plan, block_frames=4096)
    outcome = master.master(plan, tmp_path / "v.wav")
    x, _ = decode(tmp_path / "v.wav")
    first = np.flatnonzero(np.abs(x[:, 0]) > 0.01)[0] / SR
    assert abs(first - 3.0) < 0.02
    q = outcome.quality
    assert abs(lufs(x, SR) - s.target_lufs) < 0.2  # voice alone: the anchor lands on the target
    assert q.speech_lufs is not None and abs(q.speech_lufs - s.target_lufs) < 0.2
    long = _job(1.0, voice={"enabled": True})
    assert master.plan_master(long, s, voice=stem, bed=None, tone_plans=(), sample_rate=SR).total_frames == 60 * SR


def test_parallel_mp3_segments_match_a_single_encoder_render(tmp_path: Path) -> None:
    """The fast path (segments encoded at once, joined at frame boundaries) sounds like the reference."""
    from mindscript import mp3frames

    job = _job(1.5, fmt="mp3", solfeggio={"enabled": True, "hz": 528},
               binaural={"enabled": True, "band": "theta", "beatHz": 7, "carrierHz": 200})
    renders = {}
    for segments in (1, 3):
        s = _settings(encode_segments=segments)
        tones = [layers.plan_tone(k, job, s, sample_rate=SR) for k in ("solfeggio", "binaural")]
        (tmp_path / str(segments)).mkdir()
        outcome, out = _render(tmp_path / str(segments), job, s, tones=tones)
        assert outcome.plan.encode_segments == segments
        renders[segments] = decode(out)[0]
    ref, fast = renders[1], renders[3]
    assert fast.shape == ref.shape == (90 * SR, 2)
    assert abs(lufs(fast, SR) - lufs(ref, SR)) <= 0.05
    assert true_peak_dbtp(fast) <= -1.0
    for ch, hz in ((0, 528), (1, 528), (0, 200), (1, 207)):
        assert abs(peak_frequency(fast[:, ch], SR, hz) - hz) < 0.01
    # at every join the decoded waveform stays within the codec's own noise of the reference render
    for seg in audio_io.plan_mp3_segments(90 * SR, SR, 3)[1:]:
        for frame in range(seg.join_from, seg.join_to + 1, 8):
            at = frame * mp3frames.FRAME_SAMPLES
            win = slice(at - 2304, at + 2304)
            assert np.max(np.abs(fast[win] - ref[win])) < 0.002  # about -60 dB under the tones


def test_measuring_the_delivered_file_in_parts_gives_the_one_pass_figures(tmp_path: Path) -> None:
    """The file is measured as stretches at once; a peak right at a cut and the speech mask still count."""
    n = 95 * SR
    t = np.arange(n) / SR
    rng = np.random.default_rng(4)
    x = np.stack([0.1 * np.sin(2 * np.pi * 300 * t), 0.08 * np.sin(2 * np.pi * 410 * t)], axis=1)
    x += 0.03 * rng.standard_normal((n, 2)) * (np.sin(2 * np.pi * t / 13) > 0)[:, None]
    cut = round(n / 2 / SR) * SR  # where the two-part measurement splits
    burst = np.sin(np.pi / 2 * np.arange(16) + np.pi / 4)[:, None]
    x[cut - 8:cut + 8] = 0.7 * burst  # an fs/4 sine at 45 degrees: inter-sample peaks 3 dB over its samples
    path = tmp_path / "p.mp3"
    with audio_io.open_encoder(path, fmt="mp3", sample_rate=SR) as enc:
        enc.write(x.astype(np.float32))
    mask = (np.arange(n // (SR // 10) - 3) % 7) < 4
    one = master.measure_file(path, mask, parts=1)
    for parts in (2, 3):
        assert master.measure_file(path, mask, parts=parts) == one
    y, rate = decode(path)
    assert one.frames == n and abs(one.true_peak_dbtp - true_peak_dbtp(y)) <= 0.02
    assert abs(one.integrated_lufs - lufs(y, rate)) <= 0.05
    assert one.true_peak_dbtp > 20 * np.log10(0.6)  # the peak is the burst at the cut, found by both parts


@pytest.mark.parametrize("layers_on", [("voice", "background", "solfeggio", "binaural"), ("background",),
                                       ("solfeggio", "binaural"), ("voice",)])
def test_mix_in_c_is_the_numpy_mix_bit_for_bit(tmp_path: Path, layers_on: tuple[str, ...]) -> None:
    """Every block the master mixes (voice, looped ducked bed, tones, their fades) is the same float32 values
    from the C kernel as from numpy (mindscript/dsp/_native.py), whatever the block size."""
    from mindscript.dsp import _native

    if _native.lib is None:
        pytest.skip("no DSP kernels library (DSP_KERNELS=numpy or not built)")
    cfg = {"voice": {"enabled": True}, "background": {"enabled": True, "trackUrl": str(_bed_file(tmp_path, 7.3))},
           "solfeggio": {"enabled": True, "hz": 528}, "binaural": {"enabled": True, "band": "theta"}}
    job = _job(0.5, **{k: cfg[k] for k in layers_on})
    s = _settings(voice_lead_in_s=2.0, voice_tail_s=2.0, loop_crossfade_s=0.5, background_fade_in_s=3.0,
                  program_fade_out_s=4.0)
    stem = _voice_stem(tmp_path, on_s=3.0, off_s=2.0, total_s=20.0) if "voice" in layers_on else None
    bed = None
    if "background" in layers_on:
        (tmp_path / "ws").mkdir(exist_ok=True)
        bed = layers.prepare_background(job, s, tmp_path / "ws", sample_rate=SR, allow_local=True)
    tones = tuple(layers.plan_tone(k, job, s, sample_rate=SR) for k in ("solfeggio", "binaural") if k in layers_on)
    plan = master.plan_master(job, s, voice=stem, bed=bed, tone_plans=tones, sample_rate=SR)
    mixer = master.Mixer(plan)
    keep = _native.lib
    try:
        for size in (65536, 10_007):
            for start in range(0, plan.total_frames, size):
                n = min(size, plan.total_frames - start)
                native = mixer.block(start, n)
                _native.lib = None
                reference = mixer.block(start, n)
                _native.lib = keep
                assert native.dtype == reference.dtype == np.float32 and native.shape == (n, 2)
                assert np.array_equal(native, reference), (size, start)
        assert np.abs(mixer.block(int(2.5 * SR), SR)).max() > 1e-3  # the layers are in it (the voice speaks)
    finally:
        _native.lib = keep
        mixer.close()
