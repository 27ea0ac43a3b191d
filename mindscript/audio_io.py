"""The codec edge: the only module where bytes become arrays and arrays become bytes.

Everything above this module deals in float32 arrays shaped ``(frames, channels)`` or in file paths.
Decoding uses libsndfile (through ``soundfile``) when it can read the file directly, and the ffmpeg binary
bundled with ``imageio-ffmpeg`` for every other codec and for resampling; no system ffmpeg is used.

Every function here streams: memory stays bounded by the block size, never by the length of the track.
Outputs are written to a ``.part`` file next to the destination and renamed into place only on success,
so a failure never leaves a truncated file where a caller expects a finished one.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import queue
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from mindscript import lame, mp3frames
from mindscript.errors import AssetNotFound, AssetTooLarge, EncoderFailed, InvalidAudio

__all__ = [
    "AudioInfo",
    "Encoder",
    "FrameReader",
    "Mp3Segment",
    "SegmentedMp3Encoder",
    "decode_bytes",
    "decode_to_wav",
    "ffmpeg_exe",
    "iter_blocks",
    "open_encoder",
    "open_segmented_mp3",
    "open_stem_writer",
    "plan_mp3_segments",
    "read_info",
    "write_wav_f32",
]

FloatArray = NDArray[np.float32]

# 64 Ki frames: ~1.5 s at 44.1 kHz, 512 KiB per block for stereo float32. Large enough that per-block
# Python overhead is negligible, small enough that memory stays flat.
_BLOCK_FRAMES = 65536
# Keep only the tail of ffmpeg's stderr: a corrupt file can make the decoder log one line per packet.
_STDERR_TAIL_BYTES = 4096
# A resampler may add or drop a few output frames; the duration limit tolerates 10 ms of that.
_LIMIT_SLACK_S = 0.010
# Linux F_SETPIPE_SZ: a 1 MiB pipe lets Python hand over a whole block and go on producing the next one
# while ffmpeg encodes the previous one on the other core.
_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1 << 20


@dataclass(frozen=True)
class AudioInfo:
    """What a decoded or encoded audio file holds."""

    path: Path
    frames: int
    sample_rate: int
    channels: int

    @property
    def duration_s(self) -> float:
        """Duration in seconds (frames / sample_rate)."""
        return self.frames / self.sample_rate


# --------------------------------------------------------------------------------------------- ffmpeg


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (resolved once)."""
    import imageio_ffmpeg  # imported lazily: it probes the filesystem on first use

    return str(imageio_ffmpeg.get_ffmpeg_exe())


@functools.cache
def _ffmpeg_has_soxr() -> bool:
    """Whether the bundled ffmpeg was configured with libsoxr (the better resampler)."""
    try:
        out = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-version"],
            capture_output=True,
            check=False,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"--enable-libsoxr" in out


def _resample_filter() -> str:
    # soxr at 28 bits is transparent for 16/24-bit material; swr's default 32-tap filter is audibly
    # duller near Nyquist, so without soxr use a longer filter and a cutoff closer to Nyquist.
    if _ffmpeg_has_soxr():
        return "aresample=resampler=soxr:precision=28"
    return "aresample=filter_size=128:phase_shift=10:cutoff=0.97"


# ffmpeg prefixes lines with "[component @ 0xADDR]" and ends a failed decode with thread bookkeeping lines
# that say nothing about the input; both are dropped so the quoted line is the diagnostic itself.
_FFMPEG_PREFIX = re.compile(r"^(?:\[[^\]]* @ 0x[0-9a-f]+\]\s*)+")
_FFMPEG_NOISE = ("Terminating thread with return code", "Task finished with error code")


def _last_line(raw: bytes, limit: int = 200) -> str:
    """The last meaningful line of a tool's stderr, shortened for an error message."""
    lines = [_FFMPEG_PREFIX.sub("", ln.strip()) for ln in raw.decode("utf-8", "replace").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(_FFMPEG_NOISE)]
    if not lines:
        return "no diagnostic output"
    line = lines[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _read_tail(fh: IO[bytes]) -> bytes:
    fh.flush()
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - _STDERR_TAIL_BYTES))
    return fh.read()


def _part_path(dst: Path) -> Path:
    # Same directory as dst so the final os.replace is an atomic rename on one filesystem.
    return dst.with_name(f".{dst.name}.part")


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# ------------------------------------------------------------------------------------------- decoding


def _map_channels(block: FloatArray, channels: int) -> FloatArray:
    """Up/down-mix ``(n, c)`` to ``(n, channels)``.

    Mono is duplicated to every channel; anything to mono is the mean of the channels (so identical L/R
    keep their level); more than two channels to stereo keeps the first two, which are front left/right
    in the WAV/FLAC/Vorbis channel orders.
    """
    have = block.shape[1]
    if have == channels:
        return block
    if channels == 1:
        return block.mean(axis=1, keepdims=True, dtype=np.float32)
    if have == 1:
        return np.repeat(block, channels, axis=1)
    return np.ascontiguousarray(block[:, :channels])


def _check_channels(channels: int) -> None:
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels!r}")


def _check_rate(sample_rate: int) -> None:
    if sample_rate <= 0 or int(sample_rate) != sample_rate:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")


def _limit_frames(max_duration_s: float | None, sample_rate: int) -> int | None:
    if max_duration_s is None:
        return None
    if not max_duration_s > 0:
        raise ValueError(f"max_duration_s must be positive, got {max_duration_s!r}")
    return math.ceil((max_duration_s + _LIMIT_SLACK_S) * sample_rate)


def _too_long(src: Path, frames: int, sample_rate: int, max_duration_s: float) -> AssetTooLarge:
    return AssetTooLarge(
        f"audio file '{src}' decodes to more than {max_duration_s:g} s "
        f"(at least {frames / sample_rate:.3f} s); refusing it"
    )


def decode_to_wav(
    src: Path,
    dst: Path,
    *,
    sample_rate: int,
    channels: int,
    max_duration_s: float | None = None,
) -> AudioInfo:
    """Decode any common audio file to a float32 WAV at ``sample_rate`` with ``channels`` (1 or 2).

    Streams in bounded memory. When libsndfile reads ``src`` and its rate already equals ``sample_rate``
    the samples are copied blockwise in-process; otherwise the bundled ffmpeg decodes and resamples.

    Raises:
        AssetNotFound: ``src`` does not exist.
        InvalidAudio: ``src`` is not decodable audio or holds no audio frames.
        AssetTooLarge: the decoded audio is longer than ``max_duration_s`` (decompression bombs).
    """
    src, dst = Path(src), Path(dst)
    _check_rate(sample_rate)
    _check_channels(channels)
    limit = _limit_frames(max_duration_s, sample_rate)
    if not src.is_file():
        raise AssetNotFound(f"audio file '{src}' does not exist")

    part = _part_path(dst)
    try:
        copied = _copy_with_soundfile(src, part, sample_rate, channels, limit, max_duration_s)
        if not copied:
            _decode_with_ffmpeg(src, part, sample_rate, channels, limit, max_duration_s)
        info = sf.info(str(part))
        if info.frames == 0:
            raise InvalidAudio(f"audio file '{src}' holds no audio frames")
        os.replace(part, dst)
    except BaseException:
        _unlink_quietly(part)
        raise
    return AudioInfo(path=dst, frames=int(info.frames), sample_rate=int(info.samplerate), channels=channels)


def _copy_with_soundfile(
    src: Path,
    part: Path,
    sample_rate: int,
    channels: int,
    limit: int | None,
    max_duration_s: float | None,
) -> bool:
    """Fast path: blockwise copy through libsndfile. Returns False when ffmpeg must do the work."""
    try:
        reader = sf.SoundFile(str(src))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return False  # not a libsndfile format (m4a, aac, ...) or not audio: ffmpeg decides
    with reader:
        if reader.samplerate != sample_rate or (reader.channels > 2 and channels == 2):
            # Resampling and surround downmix need ffmpeg's filters.
            return False
        if limit is not None and max_duration_s is not None and reader.frames > limit:
            raise _too_long(src, reader.frames, sample_rate, max_duration_s)
        total = 0
        try:
            with sf.SoundFile(
                str(part), "w", samplerate=sample_rate, channels=channels, subtype="FLOAT", format="WAV"
            ) as writer:
                buffer = np.empty((_BLOCK_FRAMES, reader.channels), dtype=np.float32)
                while len(block := reader.read(_BLOCK_FRAMES, dtype="float32", always_2d=True, out=buffer)):
                    total += len(block)
                    # The header's frame count can lie (VBR MP3 without a Xing frame): count as we go.
                    if limit is not None and max_duration_s is not None and total > limit:
                        raise _too_long(src, total, sample_rate, max_duration_s)
                    writer.write(_map_channels(block, channels))
        except (sf.LibsndfileError, RuntimeError):
            # A stream libsndfile opens but cannot finish (corrupt frames mid-file): ffmpeg's decoders
            # are more tolerant and, failing that, produce the diagnostic the caller needs.
            _unlink_quietly(part)
            return False
    return True


def _decode_with_ffmpeg(
    src: Path,
    part: Path,
    sample_rate: int,
    channels: int,
    limit: int | None,
    max_duration_s: float | None,
) -> None:
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(src), "-vn"]
    if max_duration_s is not None:
        # Stop decoding just past the limit so a bomb costs at most max_duration_s + 1 s of work; the
        # frame count below decides whether the limit was exceeded.
        cmd += ["-t", f"{max_duration_s + 1.0:.3f}"]
    cmd += [
        "-af", _resample_filter(),
        "-ac", str(channels),
        "-ar", str(sample_rate),
        "-c:a", "pcm_f32le",
        "-rf64", "auto",  # plain RIFF until 4 GiB, RF64 beyond, so very long decodes stay valid
        "-map_metadata", "-1",
        "-f", "wav",
        "-y", str(part),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as err:
        try:
            rc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            ).returncode
        except OSError as exc:
            raise InvalidAudio(f"cannot run ffmpeg to decode '{src}': {exc}") from exc
        tail = _read_tail(err)
    if rc != 0:
        raise InvalidAudio(f"audio file '{src}' could not be decoded: ffmpeg: {_last_line(tail)}")
    try:
        frames = sf.info(str(part)).frames
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise InvalidAudio(f"audio file '{src}' could not be decoded: ffmpeg: {_last_line(tail)}") from exc
    if frames == 0:
        raise InvalidAudio(f"audio file '{src}' holds no audio frames: ffmpeg: {_last_line(tail)}")
    if limit is not None and max_duration_s is not None and frames > limit:
        raise _too_long(src, frames, sample_rate, max_duration_s)


def decode_bytes(
    data: bytes,
    *,
    sample_rate: int,
    channels: int,
    fmt_hint: str | None = None,
    pcm_rate: int | None = None,
) -> FloatArray:
    """Decode a short in-memory response (TTS audio) to float32 ``(frames, channels)`` at ``sample_rate``.

    WAV, MP3, FLAC and OGG are recognised by content. ``fmt_hint="pcm_s16le"`` means headerless mono
    16-bit little-endian PCM at ``pcm_rate``. Resampling is polyphase with the exact rational ratio.

    Raises:
        InvalidAudio: the bytes are empty, not audio, or raw PCM without a rate.
    """
    _check_rate(sample_rate)
    _check_channels(channels)
    what = f"audio bytes ({fmt_hint or 'unknown format'}, {len(data)} bytes)"
    if not data:
        raise InvalidAudio(f"{what}: empty response")
    if fmt_hint == "pcm_s16le":
        if pcm_rate is None or pcm_rate <= 0:
            raise InvalidAudio(f"{what}: raw PCM needs a positive pcm_rate, got {pcm_rate!r}")
        if len(data) % 2:
            raise InvalidAudio(f"{what}: odd byte count for 16-bit samples")
        samples = (np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0))[:, None]
        rate = pcm_rate
    else:
        try:
            samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            raise InvalidAudio(f"{what}: not decodable audio: {exc}") from exc
        if len(samples) == 0:
            raise InvalidAudio(f"{what}: holds no audio frames")
    samples = _map_channels(samples, channels)
    if rate != sample_rate:
        from scipy.signal import resample_poly  # only here: scipy.signal is a large import (see dsp.loudness)

        ratio = Fraction(sample_rate, int(rate))  # reduced by gcd, e.g. 44100/24000 -> 147/80
        samples = resample_poly(samples, ratio.numerator, ratio.denominator, axis=0)
    return np.ascontiguousarray(samples, dtype=np.float32)


# Containers of uncompressed or losslessly compressed PCM: exact frame counts and sample-exact seeking.
_LOSSLESS_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "AIFF", "FLAC", "CAF"})


def reads_as_stem(path: Path, *, sample_rate: int, max_duration_s: float | None = None) -> bool:
    """Whether ``path`` can be read in place as a mono stem: a lossless container libsndfile reads, one channel
    at ``sample_rate``, holding audio and no longer than ``max_duration_s``. Reading it as float32 gives the
    same samples as :func:`decode_to_wav` would write, so it can stand in for that copy."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return False
    limit = _limit_frames(max_duration_s, sample_rate)
    return (info.format in _LOSSLESS_FORMATS and info.channels == 1 and info.samplerate == sample_rate
            and 0 < info.frames and (limit is None or info.frames <= limit))


def read_info(path: Path) -> AudioInfo:
    """Frames, rate and channels of a file libsndfile can read (WAV, FLAC, OGG, MP3).

    Raises:
        AssetNotFound: ``path`` does not exist.
        InvalidAudio: libsndfile cannot read it.
    """
    path = Path(path)
    if not path.is_file():
        raise AssetNotFound(f"audio file '{path}' does not exist")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise InvalidAudio(f"audio file '{path}' is not readable audio: {exc}") from exc
    return AudioInfo(path=path, frames=int(info.frames), sample_rate=int(info.samplerate),
                     channels=int(info.channels))  # fmt: skip


def iter_blocks(
    path: Path,
    blocksize: int,
    *,
    start: int = 0,
    frames: int | None = None,
) -> Iterator[FloatArray]:
    """Yield float32 ``(n, channels)`` blocks of at most ``blocksize`` frames from ``start``.

    ``frames`` limits how many frames are read in total (None: to the end). Works for every format
    libsndfile reads, including MP3 with gapless trimming from its LAME header.

    Raises:
        AssetNotFound: ``path`` does not exist.
        InvalidAudio: libsndfile cannot read it.
    """
    path = Path(path)
    if blocksize <= 0:
        raise ValueError(f"blocksize must be positive, got {blocksize!r}")
    if not path.is_file():
        raise AssetNotFound(f"audio file '{path}' does not exist")
    try:
        reader = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise InvalidAudio(f"audio file '{path}' is not readable audio: {exc}") from exc
    with reader:
        try:
            if start:
                reader.seek(start)
            left = -1 if frames is None else frames
            while left:
                # a fresh array per block, decoded straight into it (SoundFile.blocks decodes into one
                # buffer and copies every block out of it)
                block = reader.read(blocksize if left < 0 else min(blocksize, left), dtype="float32",
                                    always_2d=True)
                if not len(block):
                    return
                if left > 0:
                    left -= len(block)
                yield block
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise InvalidAudio(f"audio file '{path}' failed while decoding: {exc}") from exc


class FrameReader:
    """Random access to a stem (any file libsndfile reads): ``read(start, n)`` frames, zero-padded past the
    end, up/down-mixed to ``channels``. The file stays open between reads (one seek per read).
    """

    def __init__(self, path: Path, channels: int) -> None:
        _check_channels(channels)
        self.path = Path(path)
        self.channels = channels
        try:
            self._file = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            raise InvalidAudio(f"audio file '{self.path}' is not readable audio: {exc}") from exc
        self.frames = self._file.frames

    def read(self, start: int, n: int) -> FloatArray:
        n = max(n, 0)
        have = 0 if start < 0 or start >= self.frames else min(n, self.frames - start)
        out = np.empty((n, self.channels), dtype=np.float32)
        out[have:] = 0.0
        if have == 0:
            return out
        try:
            self._file.seek(start)
            if self._file.channels == self.channels:  # decoded straight into the block, no copy
                self._file.read(have, dtype="float32", always_2d=True, fill_value=0.0, out=out[:have])
            else:
                out[:have] = _map_channels(self._file.read(have, dtype="float32", always_2d=True), self.channels)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise InvalidAudio(f"audio file '{self.path}' failed while decoding: {exc}") from exc
        return out

    def close(self) -> None:
        self._file.close()


def write_wav_f32(path: Path, samples: FloatArray, sample_rate: int) -> Path:
    """Write a float32 WAV (for stems and intermediates). ``samples`` is ``(frames, channels)``."""
    path = Path(path)
    _check_rate(sample_rate)
    if samples.ndim != 2:
        raise ValueError(f"samples must be 2-D (frames, channels), got shape {samples.shape!r}")
    part = _part_path(path)
    try:
        sf.write(str(part), np.asarray(samples, dtype=np.float32), sample_rate, subtype="FLOAT", format="WAV")
        os.replace(part, path)
    except BaseException:
        _unlink_quietly(part)
        raise
    return path


# ------------------------------------------------------------------------------------------- encoding


class _ClosesOnExit:
    """As a context manager: a clean exit closes (``close``), an exception aborts (``abort``)."""

    def close(self) -> Path:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Encoder(_ClosesOnExit):
    """A streaming encoder: ``write`` float32 ``(n, channels)`` blocks, then ``close`` (or ``abort``).

    As a context manager, a clean exit closes and an exception aborts (removing the partial file). The
    finished file appears at its path only after a successful ``close``.
    """

    def __init__(self, path: Path, *, sample_rate: int, channels: int) -> None:
        _check_rate(sample_rate)
        _check_channels(channels)
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.channels = channels
        self.frames_written = 0
        self._part = _part_path(self.path)
        self._state: Literal["open", "closed", "aborted"] = "open"

    def write(self, block: FloatArray) -> None:
        """Encode one block of float32 samples in [-1, 1], shaped ``(n, channels)``."""
        if self._state != "open":
            raise EncoderFailed(f"encoder for '{self.path}' is {self._state}; cannot write")
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(
                f"block for '{self.path}' must have shape (n, {self.channels}), got {block.shape!r}"
            )
        if len(block) == 0:
            return
        try:
            self._write(np.ascontiguousarray(block, dtype=np.float32))
        except BaseException:
            self.abort()
            raise
        self.frames_written += len(block)

    def close(self) -> Path:
        """Finish the file and move it into place; idempotent. Returns the path."""
        if self._state == "closed":
            return self.path
        if self._state == "aborted":
            raise EncoderFailed(f"encoder for '{self.path}' was aborted; nothing to close")
        try:
            self._finish()
            os.replace(self._part, self.path)
        except BaseException:
            self.abort()
            raise
        self._state = "closed"
        return self.path

    def abort(self) -> None:
        """Stop encoding and remove the partial file; idempotent."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._kill()
        finally:
            _unlink_quietly(self._part)

    # Subclass hooks.
    def _write(self, block: FloatArray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _kill(self) -> None:
        raise NotImplementedError


class _Mp3Encoder(Encoder):
    """LAME through the bundled ffmpeg, fed raw float32 on stdin.

    ffmpeg writes to a seekable file so the mp3 muxer can go back and fill in the Xing/LAME header with
    the encoder delay and padding; decoders that honour it (libsndfile/mpg123, ffmpeg) return exactly the
    frames that were written. No ID3 tag is written: the file carries no metadata worth a tag, and without
    one the first frame is the Xing frame, which every gapless decoder finds. ``-fflags +bitexact`` keeps
    the library version string out of the file so the same input encodes to the same bytes.
    """

    def __init__(self, path: Path, *, sample_rate: int, channels: int, bitrate_kbps: int) -> None:
        super().__init__(path, sample_rate=sample_rate, channels=channels)
        cmd = [
            ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error",
            "-f", "f32le", "-ar", str(sample_rate), "-ac", str(channels), "-i", "pipe:0",
            "-c:a", "libmp3lame", "-b:a", f"{bitrate_kbps}k",
            "-compression_level", "3",  # LAME -q 3: near -q 2 quality at a fraction of the CPU
            "-id3v2_version", "0", "-write_xing", "1",
            "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
            "-f", "mp3", "-y", str(self._part),
        ]  # fmt: skip
        # stderr goes to an unnamed temp file: it can never fill up and block ffmpeg the way a pipe
        # nobody reads would.
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
            )
        except OSError as exc:
            self._stderr.close()
            raise EncoderFailed(f"cannot start ffmpeg to encode '{self.path}': {exc}") from exc
        assert self._proc.stdin is not None
        self._stdin = self._proc.stdin
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.fcntl(self._stdin.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)

    def _failure(self, what: str) -> EncoderFailed:
        rc = self._proc.wait()
        tail = _read_tail(self._stderr)
        return EncoderFailed(f"MP3 encoder for '{self.path}' {what} (exit {rc}): {_last_line(tail)}")

    def _write(self, block: FloatArray) -> None:
        data = np.clip(block, -1.0, 1.0).astype("<f4", copy=False)
        try:
            self._stdin.write(memoryview(data).cast("B"))  # no bytes copy of the block
        except (BrokenPipeError, ValueError) as exc:
            raise self._failure("stopped accepting audio") from exc

    def _finish(self) -> None:
        try:
            self._stdin.close()
        except BrokenPipeError:
            pass  # the exit status below explains why
        rc = self._proc.wait()
        if rc != 0:
            raise self._failure("failed")
        self._stderr.close()

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(OSError, ValueError):
            self._stdin.close()
        self._proc.wait()
        self._stderr.close()


class _LameEncoder(Encoder):
    """LAME in this process (:mod:`mindscript.lame`) on a thread of its own, fed through a short queue.

    ``write`` copies (and clips) the block and returns; the thread encodes while the caller produces the
    next one, as the ffmpeg subprocess would, without the pipe. On close the stream is flushed and its
    first frame replaced by LAME's Xing/LAME tag (frame count, encoder delay and padding for gapless
    decoders). Same settings as the ffmpeg path: CBR at ``bitrate_kbps``, quality 3, joint stereo.
    """

    _QUEUE_BLOCKS = 4

    def __init__(self, path: Path, *, sample_rate: int, channels: int, bitrate_kbps: int) -> None:
        super().__init__(path, sample_rate=sample_rate, channels=channels)
        try:
            self._stream = lame.LameStream(sample_rate=sample_rate, channels=channels, bitrate_kbps=bitrate_kbps)
        except (RuntimeError, ValueError, MemoryError) as exc:
            raise EncoderFailed(f"cannot start LAME to encode '{self.path}': {exc}") from exc
        try:
            self._file = open(self._part, "wb")  # noqa: SIM115 (closed by _finish / _kill)
        except OSError as exc:
            self._stream.close()
            raise EncoderFailed(f"MP3 encoder for '{self.path}' cannot write its file: {exc.strerror}") from exc
        self._queue: queue.Queue[FloatArray | None] = queue.Queue(maxsize=self._QUEUE_BLOCKS)
        self._error: BaseException | None = None
        self._abandon = False
        self._thread = threading.Thread(target=self._run, name=f"lame-{self.path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (block := self._queue.get()) is not None:
                if not self._abandon:
                    self._file.write(self._stream.encode(block))
            if not self._abandon:
                self._file.write(self._stream.flush())
                self._file.seek(0)
                self._file.write(self._stream.lametag())  # over the placeholder frame LAME began with
        except BaseException as exc:  # reported to the writer; keep taking blocks so it never blocks
            self._error = exc
            while self._queue.get() is not None:
                pass

    def _failure(self) -> EncoderFailed:
        return EncoderFailed(f"MP3 encoder for '{self.path}' failed: {self._error}")

    def _write(self, block: FloatArray) -> None:
        if self._error is not None:
            raise self._failure()
        self._queue.put(np.clip(block, -1.0, 1.0))  # a copy the caller cannot change under the encoder

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._stream.close()
        self._file.close()

    def _finish(self) -> None:
        self._stop()
        if self._error is not None:
            raise self._failure()

    def _kill(self) -> None:
        self._abandon = True
        self._stop()


def _mp3_encoder(path: Path, *, sample_rate: int, channels: int, bitrate_kbps: int) -> Encoder:
    """LAME in this process where the lameenc wheel provides it, else LAME through the bundled ffmpeg."""
    if not 8 <= bitrate_kbps <= 320:
        raise ValueError(f"bitrate_kbps must be within 8..320, got {bitrate_kbps!r}")
    kind = _LameEncoder if lame.available() else _Mp3Encoder
    return kind(path, sample_rate=sample_rate, channels=channels, bitrate_kbps=bitrate_kbps)


class _WavEncoder(Encoder):
    """16-bit PCM WAV with TPDF dither.

    The dither is ±1 LSB triangular noise from a Generator seeded with ``dither_seed``; it is drawn as one
    continuous stream, so the same samples and seed give identical bytes whatever the block sizes.
    """

    def __init__(self, path: Path, *, sample_rate: int, channels: int, dither_seed: int) -> None:
        super().__init__(path, sample_rate=sample_rate, channels=channels)
        self._rng = np.random.default_rng(dither_seed)
        self._file = sf.SoundFile(
            str(self._part), "w", samplerate=sample_rate, channels=channels, subtype="PCM_16", format="WAV"
        )

    def _write(self, block: FloatArray) -> None:
        # Scale by 32768 (not 32767) because libsndfile reads int16 back as value / 32768: a sample
        # written at 0.5 reads back at 0.5.
        noise = self._rng.random((len(block), self.channels, 2), dtype=np.float32)
        tpdf = noise[..., 0] - noise[..., 1]  # difference of two uniforms: triangular on (-1, 1) LSB
        scaled = block * np.float32(32768.0) + tpdf
        pcm = np.clip(np.rint(scaled), -32768, 32767).astype(np.int16)
        self._file.write(pcm)

    def _finish(self) -> None:
        self._file.close()

    def _kill(self) -> None:
        self._file.close()


class _FloatWavWriter(Encoder):
    """32-bit float WAV, unclipped: stems are normalized later, so headroom above 0 dBFS survives."""

    def __init__(self, path: Path, *, sample_rate: int, channels: int) -> None:
        super().__init__(path, sample_rate=sample_rate, channels=channels)
        self._file = sf.SoundFile(
            str(self._part), "w", samplerate=sample_rate, channels=channels, subtype="FLOAT", format="WAV"
        )

    def _write(self, block: FloatArray) -> None:
        self._file.write(block)

    def _finish(self) -> None:
        self._file.close()

    def _kill(self) -> None:
        self._file.close()


class StemCanvas(Encoder):
    """A float32 WAV of a known length whose frames are written at any position, by several threads at once.

    The header is written first and the data region sized at once; ``write_at`` puts a block at its frame with
    ``os.pwrite`` (no shared file position, and no mapped pages counted in the writer's memory). Frames never
    written read as silence; ``write`` appends after what ``write`` wrote before. The lifecycle is the
    encoders': the file appears at its path on ``close``; ``abort`` (or an exception in the ``with`` block)
    removes it.
    """

    def __init__(self, path: Path, *, frames: int, sample_rate: int, channels: int = 1) -> None:
        super().__init__(path, sample_rate=sample_rate, channels=channels)
        if frames < 0:
            raise ValueError(f"frames must be >= 0, got {frames!r}")
        self.frames = frames
        self._frame_bytes = 4 * channels
        data_bytes = frames * self._frame_bytes
        if data_bytes + 36 > 0xFFFFFFFF:
            raise ValueError(f"{frames} frames of {channels} channel(s) do not fit a WAV file")
        header = b"".join([
            b"RIFF", (data_bytes + 36).to_bytes(4, "little"), b"WAVE",
            b"fmt ", (16).to_bytes(4, "little"), (3).to_bytes(2, "little"), channels.to_bytes(2, "little"),
            sample_rate.to_bytes(4, "little"), (sample_rate * self._frame_bytes).to_bytes(4, "little"),
            self._frame_bytes.to_bytes(2, "little"), (32).to_bytes(2, "little"),
            b"data", data_bytes.to_bytes(4, "little"),
        ])  # fmt: skip
        self._offset = len(header)
        self._fd = os.open(self._part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.pwrite(self._fd, header, 0)
            os.ftruncate(self._fd, self._offset + data_bytes)
        except BaseException:
            self.abort()
            raise

    def write_at(self, frame: int, block: FloatArray) -> None:
        """Write ``block`` (``(n, channels)``) at ``frame``; it must lie within the file."""
        if self._state != "open":
            raise EncoderFailed(f"stem '{self.path}' is {self._state}; cannot write")
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"block for '{self.path}' must have shape (n, {self.channels}), got {block.shape!r}")
        if not 0 <= frame <= frame + len(block) <= self.frames:
            raise ValueError(f"frames {frame}..{frame + len(block)} lie outside '{self.path}' (0..{self.frames})")
        data = memoryview(np.ascontiguousarray(block, dtype="<f4")).cast("B")
        pos = self._offset + frame * self._frame_bytes
        while len(data):
            written = os.pwrite(self._fd, data, pos)
            data, pos = data[written:], pos + written

    def _write(self, block: FloatArray) -> None:
        self.write_at(self.frames_written, block)

    def _finish(self) -> None:
        os.close(self._fd)

    def _kill(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


# ------------------------------------------------------------------------------ parallel MP3 segments

# Frames of audio each later segment encodes before its join window (encoder and limiter settle: LAME's
# state and bit reservoir, the limiter's 80 ms release), the width of the window in which the join frame
# is chosen, and the frames the previous segment encodes past the window (its flush must not reach them).
_SEG_PREROLL_FRAMES = 64
_SEG_WINDOW_FRAMES = 32
_SEG_POSTROLL_FRAMES = 8
# Below this much audio per segment the pre-roll costs more than the parallelism gains.
_SEG_MIN_S = 20.0


@dataclass(frozen=True)
class Mp3Segment:
    """The slice of the program one parallel encoder is fed: input frames ``[start, stop)``."""

    index: int
    start: int  # first input frame, on the 1152-frame grid
    stop: int
    join_from: int  # program MP3 frames where this segment may take over from the previous one
    join_to: int


def plan_mp3_segments(total_frames: int, sample_rate: int, segments: int) -> tuple[Mp3Segment, ...]:
    """Split a program of ``total_frames`` into at most ``segments`` overlapping encoder inputs."""
    if total_frames <= 0:
        raise ValueError(f"total_frames must be positive, got {total_frames!r}")
    fs = mp3frames.FRAME_SAMPLES
    n = max(1, min(segments, int(total_frames / sample_rate // _SEG_MIN_S)))
    program_frames = -(-total_frames // fs)
    joins = [round(program_frames * i / n) for i in range(1, n)]
    out: list[Mp3Segment] = []
    for i in range(n):
        start = 0 if i == 0 else (joins[i - 1] - _SEG_PREROLL_FRAMES) * fs
        stop = total_frames if i == n - 1 else min(
            total_frames, (joins[i] + _SEG_WINDOW_FRAMES + _SEG_POSTROLL_FRAMES) * fs)
        lo = 0 if i == 0 else joins[i - 1]
        out.append(Mp3Segment(index=i, start=start, stop=stop, join_from=lo,
                              join_to=lo + (_SEG_WINDOW_FRAMES if i else 0)))
    return tuple(out)


class SegmentedMp3Encoder(_ClosesOnExit):
    """Encode one program as parallel MP3 segments (one LAME encoder each), joined gaplessly on close.

    Feed segment ``i`` the program's frames ``segments[i].start`` to ``segments[i].stop`` with
    ``write(i, block)``, in order within each segment and interleaved across segments as you like; each
    segment's encoder runs on its own thread (or ffmpeg process), so they use every core while the caller
    produces audio.
    ``close`` joins them at MP3 frame boundaries (see :mod:`mindscript.mp3frames`) into ``path`` with a
    correct Xing/LAME header; gapless decoders return exactly ``total_frames`` frames.
    """

    def __init__(self, path: Path, *, sample_rate: int, channels: int, bitrate_kbps: int, total_frames: int,
                 segments: int) -> None:
        self.path = Path(path)
        self.total_frames = total_frames
        self.segments = plan_mp3_segments(total_frames, sample_rate, segments)
        self._parts = [self.path.with_name(f".{self.path.name}.seg{s.index}.mp3") for s in self.segments]
        self._encoders: list[Encoder] = []
        self._state: Literal["open", "closed", "aborted"] = "open"
        self.joins: tuple[tuple[int, int], ...] = ()  # (program MP3 frame, reservoir bytes carried) per join
        try:
            for part in self._parts:
                self._encoders.append(_mp3_encoder(part, sample_rate=sample_rate, channels=channels,
                                                   bitrate_kbps=bitrate_kbps))
        except BaseException:
            self.abort()
            raise

    def write(self, index: int, block: FloatArray) -> None:
        """Encode the next block of segment ``index``."""
        seg = self.segments[index]
        enc = self._encoders[index]
        if enc.frames_written + len(block) > seg.stop - seg.start:
            raise ValueError(f"segment {index} takes {seg.stop - seg.start} frames; "
                             f"got {enc.frames_written + len(block)}")
        try:
            enc.write(block)
        except BaseException:
            self.abort()
            raise

    def close(self) -> Path:
        """Finish every segment, join them into ``path``; idempotent."""
        if self._state == "closed":
            return self.path
        if self._state == "aborted":
            raise EncoderFailed(f"encoder for '{self.path}' was aborted; nothing to close")
        try:
            for seg, enc in zip(self.segments, self._encoders, strict=True):
                if enc.frames_written != seg.stop - seg.start:
                    raise EncoderFailed(f"segment {seg.index} of '{self.path}' got {enc.frames_written} of "
                                        f"{seg.stop - seg.start} frames")
                enc.close()
            if len(self._parts) == 1:
                os.replace(self._parts[0], self.path)
            else:
                specs = [mp3frames.SegmentFile(part, seg.start // mp3frames.FRAME_SAMPLES, seg.join_from,
                                               seg.join_to) for part, seg in zip(self._parts, self.segments,
                                                                                 strict=True)]
                try:
                    self.joins = mp3frames.join_segments(specs, self.path, total_samples=self.total_frames).joins
                except mp3frames.Mp3JoinError as exc:
                    raise EncoderFailed(f"cannot join the MP3 segments of '{self.path}': {exc}") from exc
        except BaseException:
            self.abort()
            raise
        finally:
            for part in self._parts:
                _unlink_quietly(part)
        self._state = "closed"
        return self.path

    def abort(self) -> None:
        """Stop every encoder and remove partial files; idempotent."""
        if self._state != "open":
            return
        self._state = "aborted"
        for enc in self._encoders:
            enc.abort()
        for part in self._parts:
            _unlink_quietly(part)


def open_segmented_mp3(path: Path, *, sample_rate: int, total_frames: int, segments: int, channels: int = 2,
                       bitrate_kbps: int = 192) -> SegmentedMp3Encoder:
    """Open a parallel MP3 encoder for a program of known length (see :class:`SegmentedMp3Encoder`)."""
    return SegmentedMp3Encoder(path, sample_rate=sample_rate, channels=channels, bitrate_kbps=bitrate_kbps,
                               total_frames=total_frames, segments=segments)


def open_stem_writer(path: Path, *, sample_rate: int, channels: int = 1) -> Encoder:
    """Open a streaming float32 WAV writer for a workspace stem (same lifecycle as ``open_encoder``)."""
    return _FloatWavWriter(path, sample_rate=sample_rate, channels=channels)


def open_encoder(
    path: Path,
    *,
    fmt: Literal["mp3", "wav"],
    sample_rate: int,
    channels: int = 2,
    bitrate_kbps: int = 192,
    dither_seed: int = 0,
) -> Encoder:
    """Open a streaming encoder writing ``path``.

    ``mp3``: CBR LAME at ``bitrate_kbps`` (quality 3) with a gapless Xing/LAME header, encoded alongside the
    caller: on a thread of this process (the lameenc wheel's LAME), or by the bundled ffmpeg in a
    subprocess where that is missing. ``wav``: 16-bit PCM with seeded TPDF
    dither (``dither_seed``). Use as a context manager; errors surface as ``EncoderFailed``.
    """
    if fmt == "mp3":
        return _mp3_encoder(path, sample_rate=sample_rate, channels=channels, bitrate_kbps=bitrate_kbps)
    if fmt == "wav":
        return _WavEncoder(path, sample_rate=sample_rate, channels=channels, dither_seed=dither_seed)
    raise ValueError(f"fmt must be 'mp3' or 'wav', got {fmt!r}")
