"""The codec edge on real files: round trips, resampling, failures, bounded memory."""

from __future__ import annotations

import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mindscript import audio_io
from mindscript.audio_io import (
    AudioInfo,
    decode_bytes,
    decode_to_wav,
    ffmpeg_exe,
    iter_blocks,
    open_encoder,
    open_stem_writer,
    read_info,
    write_wav_f32,
)
from mindscript.errors import AssetNotFound, AssetTooLarge, EncoderFailed, InvalidAudio


def sine(freq: float, sample_rate: int, frames: int, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    t = np.arange(frames) / sample_rate
    mono = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(mono[:, None], channels, axis=1)


def peak_hz(samples: np.ndarray, sample_rate: int) -> float:
    """Frequency of the strongest FFT bin, refined by parabolic interpolation on the log magnitude."""
    x = samples[:, 0] if samples.ndim == 2 else samples
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) + 1e-12
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sample_rate / len(x)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


# ------------------------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("in_process", [True, False], ids=["lame", "ffmpeg"])
@pytest.mark.parametrize("channels", [1, 2])
def test_mp3_round_trip_keeps_frame_count_and_frequency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        channels: int, in_process: bool) -> None:
    from mindscript import lame

    if not in_process:  # the fallback where the lameenc wheel is missing
        monkeypatch.setattr(lame, "available", lambda: False)
    sr = 44100
    frames = 3 * sr + 1234  # not a multiple of the 1152-sample MP3 frame
    x = sine(1000.0, sr, frames, channels)
    out = tmp_path / "tone.mp3"
    with open_encoder(out, fmt="mp3", sample_rate=sr, channels=channels, bitrate_kbps=192) as enc:
        for i in range(0, frames, 5000):  # odd block size: the encoder must not care
            enc.write(x[i : i + 5000])
    y, rate = sf.read(out, dtype="float32", always_2d=True)
    assert rate == sr
    assert y.shape == (frames, channels)  # gapless: LAME delay and padding trimmed exactly
    assert peak_hz(y, sr) == pytest.approx(1000.0, abs=2.0)
    # Aligned, not just the right length: the decoded sine lines up with the input sample for sample.
    middle = slice(sr, 2 * sr)
    assert np.max(np.abs(y[middle] - x[middle])) < 0.02
    info = read_info(out)
    assert info == AudioInfo(path=out, frames=frames, sample_rate=sr, channels=channels)
    assert info.duration_s == pytest.approx(frames / sr)
    assert leftovers(tmp_path) == []


def test_mp3_iter_blocks_seeks_sample_accurately(tmp_path: Path) -> None:
    sr = 44100
    x = np.random.default_rng(3).uniform(-0.3, 0.3, (2 * sr, 2)).astype(np.float32)
    out = tmp_path / "noise.mp3"
    with open_encoder(out, fmt="mp3", sample_rate=sr) as enc:
        enc.write(x)
    full = np.concatenate(list(iter_blocks(out, 4096)))
    assert full.shape == x.shape and full.dtype == np.float32
    part = np.concatenate(list(iter_blocks(out, 1000, start=12345, frames=30000)))
    assert part.shape == (30000, 2)
    np.testing.assert_array_equal(part, full[12345:42345])


def test_encoder_close_is_idempotent_and_returns_path(tmp_path: Path) -> None:
    enc = open_encoder(tmp_path / "a.mp3", fmt="mp3", sample_rate=44100)
    enc.write(sine(440.0, 44100, 44100, 2))
    assert enc.close() == tmp_path / "a.mp3"
    assert enc.close() == tmp_path / "a.mp3"


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
def test_encoder_abort_leaves_no_file(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    with pytest.raises(RuntimeError, match="boom"):
        with open_encoder(out, fmt=fmt, sample_rate=44100) as enc:  # type: ignore[arg-type]
            enc.write(sine(440.0, 44100, 44100, 2))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    enc.abort()  # idempotent
    with pytest.raises(EncoderFailed):
        enc.close()


@pytest.mark.parametrize("in_process", [True, False], ids=["lame", "ffmpeg"])
def test_mp3_encoder_failure_surfaces_ffmpeg_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     in_process: bool) -> None:
    from mindscript import lame

    assert lame.available()  # the project's dependencies provide LAME in-process
    if not in_process:
        monkeypatch.setattr(lame, "available", lambda: False)
    out = tmp_path / "missing-dir" / "out.mp3"
    with pytest.raises(EncoderFailed) as err:
        with open_encoder(out, fmt="mp3", sample_rate=44100) as enc:
            for _ in range(20):
                enc.write(sine(440.0, 44100, 44100, 2))
    assert str(out) in str(err.value)
    assert "No such file or directory" in str(err.value)  # the OS's (or ffmpeg's last stderr line) message
    assert not out.exists()


def test_encoder_rejects_wrong_block_shape(tmp_path: Path) -> None:
    with open_encoder(tmp_path / "a.wav", fmt="wav", sample_rate=44100, channels=2) as enc:
        with pytest.raises(ValueError, match=r"\(n, 2\)"):
            enc.write(np.zeros((10, 1), np.float32))
        enc.write(np.zeros((10, 2), np.float32))


def test_wav_dither_is_deterministic_level_true_and_blocksize_independent(tmp_path: Path) -> None:
    sr = 48000
    x = sine(997.0, sr, sr, 2, amp=0.5)

    def encode(name: str, block: int, seed: int) -> bytes:
        path = tmp_path / name
        with open_encoder(path, fmt="wav", sample_rate=sr, dither_seed=seed) as enc:
            for i in range(0, len(x), block):
                enc.write(x[i : i + block])
        return path.read_bytes()

    a = encode("a.wav", 4800, seed=7)
    assert encode("b.wav", 4800, seed=7) == a
    assert encode("c.wav", 1234, seed=7) == a  # one continuous dither stream
    assert encode("d.wav", 4800, seed=8) != a

    y, rate = sf.read(tmp_path / "a.wav", dtype="float32", always_2d=True)
    info = sf.info(tmp_path / "a.wav")
    assert (rate, info.subtype, y.shape) == (sr, "PCM_16", x.shape)
    rms_in = np.sqrt(np.mean(x.astype(np.float64) ** 2))
    rms_out = np.sqrt(np.mean(y.astype(np.float64) ** 2))
    assert 20 * np.log10(rms_out / rms_in) == pytest.approx(0.0, abs=0.01)
    error = (y - x) * 32768.0  # in LSB: TPDF (±1 LSB) plus rounding, never more than 1.5 LSB
    assert np.max(np.abs(error)) <= 1.5 + 1e-3
    assert np.std(error) == pytest.approx(np.sqrt(1 / 6 + 1 / 12), rel=0.05)  # TPDF var 1/6 + quant 1/12


def test_wav_encoder_clips_instead_of_wrapping(tmp_path: Path) -> None:
    x = np.array([[1.5, -1.5], [1.0, -1.0]], dtype=np.float32)
    with open_encoder(tmp_path / "c.wav", fmt="wav", sample_rate=8000) as enc:
        enc.write(x)
    y, _ = sf.read(tmp_path / "c.wav", dtype="int16")
    assert y[0, 0] == 32767 and y[0, 1] == -32768
    assert y[1, 0] >= 32766 and y[1, 1] <= -32767


def test_stem_writer_streams_float32_unclipped(tmp_path: Path) -> None:
    x = np.random.default_rng(2).uniform(-1.5, 1.5, (10000, 1)).astype(np.float32)
    with open_stem_writer(tmp_path / "voice.wav", sample_rate=24000) as stem:
        for i in range(0, len(x), 3000):
            stem.write(x[i : i + 3000])
        assert not (tmp_path / "voice.wav").exists()  # appears only when finished
    y, rate = sf.read(tmp_path / "voice.wav", dtype="float32", always_2d=True)
    assert rate == 24000
    np.testing.assert_array_equal(y, x)


def test_write_wav_f32_round_trip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (1000, 2)).astype(np.float32)
    write_wav_f32(tmp_path / "s.wav", x, 22050)
    y, rate = sf.read(tmp_path / "s.wav", dtype="float32")
    assert rate == 22050 and sf.info(tmp_path / "s.wav").subtype == "FLOAT"
    np.testing.assert_array_equal(y, x)


# ------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "suffix"),
    [
        ("MP3", "MPEG_LAYER_III", 22050, "mp3"),
        ("MP3", "MPEG_LAYER_III", 48000, "mp3"),
        ("OGG", "VORBIS", 48000, "ogg"),
        ("FLAC", "PCM_16", 48000, "flac"),
        ("WAV", "PCM_24", 32000, "wav"),
    ],
)
def test_decode_to_wav_resamples_preserving_frequency_and_duration(
    tmp_path: Path, fmt: str, subtype: str, rate: int, suffix: str
) -> None:
    frames = int(2.5 * rate) + 7
    src = tmp_path / f"in.{suffix}"
    sf.write(src, sine(440.0, rate, frames), rate, format=fmt, subtype=subtype)
    dst = tmp_path / "out.wav"
    info = decode_to_wav(src, dst, sample_rate=44100, channels=2)
    y, sr = sf.read(dst, dtype="float32", always_2d=True)
    assert (sr, y.shape[1], sf.info(dst).subtype) == (44100, 2, "FLOAT")
    assert info == AudioInfo(path=dst, frames=len(y), sample_rate=44100, channels=2)
    assert abs(len(y) / 44100 - frames / rate) < 0.001
    assert peak_hz(y, 44100) == pytest.approx(440.0, abs=1.0)
    np.testing.assert_array_equal(y[:, 0], y[:, 1])
    assert leftovers(tmp_path) == []


def test_decode_to_wav_fast_path_is_sample_exact_and_downmixes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, (30000, 2)).astype(np.float32)
    src = tmp_path / "in.flac"
    sf.write(src, x, 44100, subtype="PCM_24")
    ref, _ = sf.read(src, dtype="float32")
    decode_to_wav(src, tmp_path / "stereo.wav", sample_rate=44100, channels=2)
    np.testing.assert_array_equal(sf.read(tmp_path / "stereo.wav", dtype="float32")[0], ref)
    decode_to_wav(src, tmp_path / "mono.wav", sample_rate=44100, channels=1)
    mono, _ = sf.read(tmp_path / "mono.wav", dtype="float32")
    np.testing.assert_allclose(mono, ref.mean(axis=1), atol=1e-7)


def test_decode_to_wav_decodes_aac_in_m4a_via_ffmpeg(tmp_path: Path) -> None:
    src = tmp_path / "in.m4a"
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi",
         "-i", "sine=frequency=1000:sample_rate=32000:duration=2", "-c:a", "aac", str(src)],
        check=True,
    )  # fmt: skip
    info = decode_to_wav(src, tmp_path / "out.wav", sample_rate=44100, channels=1)
    y, _ = sf.read(tmp_path / "out.wav", dtype="float32", always_2d=True)
    assert abs(info.duration_s - 2.0) < 0.03  # AAC priming is trimmed to within a frame
    assert peak_hz(y, 44100) == pytest.approx(1000.0, abs=2.0)


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not audio at all " * 200, b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 30],
    ids=["empty", "text", "bad-header"],
)
def test_decode_to_wav_refuses_non_audio_naming_the_file(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "upload.mp3"
    src.write_bytes(content)
    dst = tmp_path / "out.wav"
    with pytest.raises(InvalidAudio) as err:
        decode_to_wav(src, dst, sample_rate=44100, channels=2)
    message = str(err.value)
    assert str(src) in message
    assert "ffmpeg" in message or "no audio frames" in message
    assert len(message) < 400
    assert not dst.exists() and leftovers(tmp_path) == []


def test_decode_to_wav_corrupt_flac_names_the_file(tmp_path: Path) -> None:
    src = tmp_path / "bed.flac"
    sf.write(src, sine(440.0, 48000, 48000), 48000)
    src.write_bytes(src.read_bytes()[:200])  # header and a sliver of the first frame
    with pytest.raises(InvalidAudio, match="bed.flac"):
        decode_to_wav(src, tmp_path / "out.wav", sample_rate=44100, channels=2)
    assert not (tmp_path / "out.wav").exists()


def test_decode_to_wav_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AssetNotFound, match="nope.mp3"):
        decode_to_wav(tmp_path / "nope.mp3", tmp_path / "out.wav", sample_rate=44100, channels=2)


@pytest.mark.parametrize("rate", [44100, 48000], ids=["fast-path", "ffmpeg"])
def test_decode_to_wav_enforces_max_duration(tmp_path: Path, rate: int) -> None:
    src = tmp_path / "long.flac"
    sf.write(src, sine(440.0, rate, 3 * rate), rate)
    dst = tmp_path / "out.wav"
    with pytest.raises(AssetTooLarge, match="long.flac"):
        decode_to_wav(src, dst, sample_rate=44100, channels=2, max_duration_s=2.0)
    assert not dst.exists() and leftovers(tmp_path) == []
    info = decode_to_wav(src, dst, sample_rate=44100, channels=2, max_duration_s=3.0)  # exactly at it
    assert abs(info.duration_s - 3.0) < 0.001


def test_decode_to_wav_memory_stays_bounded(tmp_path: Path) -> None:
    # 20 minutes written blockwise; ~77 MB as float32 mono, far above the allowed peak.
    sr = 16000
    src = tmp_path / "long.wav"
    block = sine(440.0, sr, 10 * sr, amp=0.3)
    with sf.SoundFile(src, "w", sr, 1, "PCM_16") as f:
        for _ in range(20 * 6):
            f.write(block)
    del block
    for target in (16000, 22050):  # the in-process copy and the ffmpeg resampling path
        tracemalloc.start()
        try:
            info = decode_to_wav(src, tmp_path / f"out{target}.wav", sample_rate=target, channels=2)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert abs(info.duration_s - 1200.0) < 0.001
        assert peak < 4 * 1024 * 1024, f"peak Python allocation {peak / 1e6:.1f} MB"


def test_read_info_and_iter_blocks_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(InvalidAudio, match="bad.wav"):
        read_info(bad)
    with pytest.raises(InvalidAudio, match="bad.wav"):
        next(iter_blocks(bad, 1024))
    with pytest.raises(AssetNotFound, match="none.wav"):
        read_info(tmp_path / "none.wav")


# -------------------------------------------------------------------------------------- decode_bytes


def encoded_bytes(tmp_path: Path, fmt: str, subtype: str, x: np.ndarray, rate: int) -> bytes:
    path = tmp_path / f"b.{fmt.lower()}"
    sf.write(path, x, rate, format=fmt, subtype=subtype)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("fmt", "subtype"),
    [("WAV", "PCM_16"), ("MP3", "MPEG_LAYER_III"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")],
)
def test_decode_bytes_formats_resample_and_map_channels(tmp_path: Path, fmt: str, subtype: str) -> None:
    x = sine(1000.0, 24000, 24000)
    data = encoded_bytes(tmp_path, fmt, subtype, x, 24000)
    y = decode_bytes(data, sample_rate=44100, channels=2, fmt_hint=fmt.lower())
    assert y.dtype == np.float32 and y.shape == (44100, 2)
    assert peak_hz(y, 44100) == pytest.approx(1000.0, abs=2.0)
    np.testing.assert_array_equal(y[:, 0], y[:, 1])


def test_decode_bytes_raw_pcm(tmp_path: Path) -> None:
    x = sine(500.0, 22050, 22050)[:, 0]
    pcm = np.rint(x * 32767).astype("<i2").tobytes()
    y = decode_bytes(pcm, sample_rate=44100, channels=1, fmt_hint="pcm_s16le", pcm_rate=22050)
    assert y.shape == (44100, 1)
    assert peak_hz(y, 44100) == pytest.approx(500.0, abs=1.0)
    same = decode_bytes(pcm, sample_rate=22050, channels=1, fmt_hint="pcm_s16le", pcm_rate=22050)
    np.testing.assert_allclose(same[:, 0], x, atol=1 / 32768 + 1e-6)
    stereo = decode_bytes(
        np.rint(sine(500.0, 22050, 100, 2) * 32767).astype("<i2").tobytes(),
        sample_rate=22050, channels=1, fmt_hint="pcm_s16le", pcm_rate=22050,
    )  # fmt: skip
    assert stereo.shape == (200, 1)  # raw PCM is mono by contract: interleaved pairs are frames


@pytest.mark.parametrize(
    ("data", "kwargs"),
    [
        (b"", {}),
        (b"<html>rate limited</html>" * 10, {"fmt_hint": "mp3"}),
        (b"\x00\x01\x02", {"fmt_hint": "pcm_s16le", "pcm_rate": 24000}),
        (b"\x00\x01", {"fmt_hint": "pcm_s16le"}),
    ],
    ids=["empty", "html", "odd-pcm", "pcm-without-rate"],
)
def test_decode_bytes_garbage(data: bytes, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidAudio):
        decode_bytes(data, sample_rate=44100, channels=2, **kwargs)  # type: ignore[arg-type]


def test_ffmpeg_is_the_bundled_one() -> None:
    import imageio_ffmpeg

    assert ffmpeg_exe() == imageio_ffmpeg.get_ffmpeg_exe()
    assert isinstance(audio_io._resample_filter(), str)


def test_frame_reader_reads_any_span_zero_padded_and_channel_mapped(tmp_path: Path) -> None:
    from mindscript.audio_io import FrameReader

    x = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)[:, None]
    path = write_wav_f32(tmp_path / "m.wav", x, 8000)
    mono, stereo = FrameReader(path, 1), FrameReader(path, 2)
    try:
        assert mono.frames == 1000
        np.testing.assert_array_equal(mono.read(10, 5), x[10:15])
        np.testing.assert_array_equal(stereo.read(990, 20)[:10], np.repeat(x[990:], 2, axis=1))
        assert not stereo.read(990, 20)[10:].any()  # past the end: silence, not an error
        assert mono.read(5000, 8).shape == (8, 1) and not mono.read(5000, 8).any()
        np.testing.assert_array_equal(mono.read(0, 3), x[:3])  # seeking back works
    finally:
        mono.close()
        stereo.close()


STEM_SR = 44100


def test_stem_canvas_takes_blocks_anywhere_from_threads(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    x = np.random.default_rng(5).standard_normal((200_000, 2)).astype(np.float32) * 3  # unclipped
    path = tmp_path / "stem.wav"
    with audio_io.StemCanvas(path, frames=len(x), sample_rate=STEM_SR, channels=2) as canvas:
        assert not path.exists()  # appears on close
        spans = [(a, min(a + 30_001, len(x))) for a in range(0, len(x), 30_001)][::-1]
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda span: canvas.write_at(span[0], x[span[0]:span[1]]), spans))
        with pytest.raises(ValueError, match="outside"):
            canvas.write_at(len(x) - 10, x[:11])
        with pytest.raises(ValueError, match="shape"):
            canvas.write_at(0, x[:10, :1])
    info = audio_io.read_info(path)
    assert (info.frames, info.channels, info.sample_rate) == (len(x), 2, STEM_SR)
    assert np.array_equal(np.concatenate(list(audio_io.iter_blocks(path, 1 << 16))), x)


def test_stem_canvas_unwritten_frames_are_silence_and_abort_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "stem.wav"
    with audio_io.StemCanvas(path, frames=1000, sample_rate=STEM_SR) as canvas:
        canvas.write_at(500, np.ones((10, 1), dtype=np.float32))
    y = np.concatenate(list(audio_io.iter_blocks(path, 4096)))
    assert y[500:510].min() == 1.0 and not y[:500].any() and not y[510:].any()
    with audio_io.StemCanvas(tmp_path / "seq.wav", frames=6, sample_rate=STEM_SR) as canvas:  # as an encoder
        canvas.write(np.full((4, 1), 0.5, dtype=np.float32))
        canvas.write(np.full((2, 1), -0.5, dtype=np.float32))
    assert np.concatenate(list(audio_io.iter_blocks(tmp_path / "seq.wav", 16)))[:, 0].tolist() == [0.5] * 4 + [-0.5] * 2
    (tmp_path / "seq.wav").unlink()
    with pytest.raises(RuntimeError), audio_io.StemCanvas(tmp_path / "b.wav", frames=10, sample_rate=STEM_SR):
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stem.wav"]
