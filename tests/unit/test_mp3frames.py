"""Parallel MP3 segments joined at frame boundaries: gapless length, header fields, no artefacts at joins.

Every file here is encoded by the bundled ffmpeg (LAME) and decoded by two independent decoders (libsndfile's
mpg123 and ffmpeg's own), so the header rewrite is checked by what real players do with it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mindscript import audio_io, mp3frames
from mindscript.errors import EncoderFailed
from tests.measure import lufs, peak_frequency

SR = 44100


def _crc16_reference(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _program(seconds: float, seed: int = 3) -> np.ndarray:
    """Tones, a slowly swelling noise bed and speech-like bursts: the content a master feeds the encoder."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, 2)).astype(np.float32)
    noise = np.cumsum(noise, axis=0) * 0.002  # brown-ish
    noise -= np.convolve(noise[:, 0], np.ones(441) / 441, mode="same")[:, None]
    bursts = (np.sin(2 * np.pi * 0.7 * t) > 0.3)[:, None] * np.sin(2 * np.pi * 180 * t * (1 + 0.1 * np.sin(t)))[:, None]
    x = np.stack([0.15 * np.sin(2 * np.pi * 528 * t), 0.15 * np.sin(2 * np.pi * 207 * t)], axis=1)
    return np.clip(x + 0.2 * noise + 0.3 * bursts, -0.99, 0.99).astype(np.float32)


def _encode_serial(x: np.ndarray, path: Path) -> Path:
    with audio_io.open_encoder(path, fmt="mp3", sample_rate=SR) as enc:
        for s in range(0, len(x), 65536):
            enc.write(x[s:s + 65536])
    return path


def _encode_segmented(x: np.ndarray, path: Path, segments: int) -> audio_io.SegmentedMp3Encoder:
    enc = audio_io.open_segmented_mp3(path, sample_rate=SR, total_frames=len(x), segments=segments)
    with enc:
        # interleaved, in odd block sizes, as the master feeds them
        cursors = [s.start for s in enc.segments]
        while any(c < s.stop for c, s in zip(cursors, enc.segments, strict=True)):
            for i, seg in enumerate(enc.segments):
                if cursors[i] < seg.stop:
                    n = min(40000 + 777 * i, seg.stop - cursors[i])
                    enc.write(i, x[cursors[i]:cursors[i] + n])
                    cursors[i] += n
    return enc


def _ffmpeg_decode(path: Path) -> np.ndarray:
    out = subprocess.run([audio_io.ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "f32le", "-"],
                         capture_output=True, check=True)
    assert out.stderr == b""
    return np.frombuffer(out.stdout, dtype="<f4").reshape(-1, 2)


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 5000, 70001])
def test_crc16_matches_the_bitwise_definition(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert mp3frames.crc16(data) == _crc16_reference(data)
    # continuing from a previous CRC equals the CRC of the concatenation
    assert mp3frames.crc16(data[size // 3:], mp3frames.crc16(data[:size // 3])) == _crc16_reference(data)


def test_crc16_agrees_with_the_crcs_ffmpeg_writes_in_the_lame_tag(tmp_path: Path) -> None:
    path = _encode_serial(_program(6.0), tmp_path / "a.mp3")
    data = path.read_bytes()
    offsets = mp3frames.frame_offsets(path)
    head = data[:offsets[1]]
    assert mp3frames.crc16(data[offsets[1]:]) == int.from_bytes(head[36 + 152:36 + 154], "big")  # music CRC
    assert mp3frames.crc16(head[:190]) == int.from_bytes(head[36 + 154:36 + 156], "big")  # tag CRC


def test_plan_splits_on_the_frame_grid_with_overlap() -> None:
    total = 600 * SR
    segs = audio_io.plan_mp3_segments(total, SR, 3)
    assert [s.index for s in segs] == [0, 1, 2]
    assert segs[0].start == 0 and segs[-1].stop == total
    for prev, nxt in zip(segs, segs[1:], strict=False):
        assert nxt.start % mp3frames.FRAME_SAMPLES == 0
        assert nxt.start < nxt.join_from * mp3frames.FRAME_SAMPLES  # pre-roll before the window
        assert prev.stop > nxt.join_to * mp3frames.FRAME_SAMPLES  # post-roll after it
    # short programs are not split: the pre-roll would cost more than it saves
    assert len(audio_io.plan_mp3_segments(15 * SR, SR, 4)) == 1


def test_segmented_encode_is_gapless_and_matches_a_serial_encode(tmp_path: Path) -> None:
    x = _program(75.0)
    ref = _encode_serial(x, tmp_path / "ref.mp3")
    enc = _encode_segmented(x, tmp_path / "par.mp3", segments=3)
    par = enc.path
    assert len(enc.joins) == 2
    assert not sorted(p.name for p in tmp_path.iterdir() if p.name not in ("ref.mp3", "par.mp3"))

    # header: frame count, size and padding describe the file, so gapless decoders return every frame
    tag = mp3frames.read_tag(par)
    assert tag.frames == len(mp3frames.frame_offsets(par)) - 2
    assert tag.bytes == par.stat().st_size
    assert tag.frames * mp3frames.FRAME_SAMPLES - tag.delay - tag.padding == len(x)
    assert tag.delay == mp3frames.read_tag(ref).delay
    y, rate = sf.read(par, dtype="float32")
    assert rate == SR and y.shape == x.shape
    z = _ffmpeg_decode(par)
    assert z.shape == x.shape
    r, _ = sf.read(ref, dtype="float32")

    # same sound: loudness and tone frequencies as the serial encode
    assert abs(lufs(y, SR) - lufs(r, SR)) < 0.05
    assert abs(peak_frequency(y[:, 0], SR, 528) - 528) < 0.01
    assert abs(peak_frequency(y[:, 1], SR, 207) - 207) < 0.01

    # around each join the coding error is that of the serial encode (no click, no gap, no echo)
    for frame, _carried in enc.joins:
        at = frame * mp3frames.FRAME_SAMPLES
        win = slice(at - 4 * mp3frames.FRAME_SAMPLES, at + 4 * mp3frames.FRAME_SAMPLES)
        err_par = np.sqrt(np.mean((y[win] - x[win]) ** 2))
        err_ref = np.sqrt(np.mean((r[win] - x[win]) ** 2))
        assert err_par <= 1.25 * err_ref + 1e-4, (frame, err_par, err_ref)
        assert np.max(np.abs(y[win] - x[win])) <= 1.5 * np.max(np.abs(r[win] - x[win])) + 1e-3
        assert np.max(np.abs(z[win] - y[win])) < 1e-4  # both decoders agree on the joined bitstream
    # frames before the first join are the serial encoder's own, bit for bit
    first = enc.joins[0][0] * mp3frames.FRAME_SAMPLES - 2 * mp3frames.FRAME_SAMPLES
    assert np.array_equal(y[:first], r[:first])


def test_joins_carry_the_bit_reservoir(tmp_path: Path) -> None:
    """At 192 kbps on this content LAME keeps its reservoir in use; a join that dropped it would be noise."""
    x = _program(60.0, seed=5)
    enc = _encode_segmented(x, tmp_path / "par.mp3", segments=2)
    (frame, carried), = enc.joins
    assert carried > 0
    y, _ = sf.read(enc.path, dtype="float32")
    at = frame * mp3frames.FRAME_SAMPLES
    err = y[at - 1152:at + 2304] - x[at - 1152:at + 2304]
    assert np.sqrt(np.mean(err ** 2)) < 0.02


def test_segment_given_too_few_frames_fails_and_cleans_up(tmp_path: Path) -> None:
    x = _program(45.0)
    enc = audio_io.open_segmented_mp3(tmp_path / "p.mp3", sample_rate=SR, total_frames=len(x), segments=2)
    with pytest.raises(EncoderFailed, match="segment 1"), enc:
        seg0, seg1 = enc.segments
        enc.write(0, x[seg0.start:seg0.stop])
        enc.write(1, x[seg1.start:seg1.stop - 10])
    assert list(tmp_path.iterdir()) == []


def test_join_refuses_a_file_that_is_not_mpeg1_layer3(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"ID3" + bytes(500))
    with pytest.raises(mp3frames.Mp3JoinError, match="no MPEG frame sync"):
        mp3frames.frame_offsets(bad)
