"""MPEG-1 Layer III bitstream surgery: join MP3 segments encoded in parallel into one gapless file.

The master encodes a long program as a few segments at once (LAME is single-threaded; the machine is not).
Each segment after the first starts encoding some frames *before* its join point (pre-roll), and each
segment before the last goes on some frames *after* it (post-roll), with every segment's start on the
1152-sample frame grid. All segments then share one frame grid, and around a join both encoders have seen
the same audio for a while, so frame ``j`` of the next segment can follow frame ``j - 1`` of the previous
one: the decoder's overlap-add across the join mixes two encodings of the same signal, which differ only
by their quantization noise.

Two things make this more than concatenation:

- The bit reservoir. A frame's main data may begin up to 511 bytes *before* the frame, inside the payload
  of earlier frames (``main_data_begin``). The first frame taken from the next segment points back into
  frames that are not in the joined file. The join is made at a frame where the previous segment left at
  least as many bytes unused as the next one needs, and those bytes are copied over, so the decoder finds
  exactly the main data the next segment's encoder wrote.
- The Xing/LAME header (first frame): frame count, byte count, seek table, encoder delay and padding (which
  gapless decoders use to trim), music length, music CRC and the tag's own CRC are rewritten for the
  joined file.

Only the MPEG-1 rates the render uses (32/44.1/48 kHz) are handled. Everything streams: memory does not
depend on the length of the program.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mindscript.dsp import _native

__all__ = [
    "FRAME_SAMPLES", "JoinResult", "LameTag", "Mp3JoinError", "SegmentFile", "crc16", "frame_offsets",
    "join_segments", "read_tag",
]

FRAME_SAMPLES = 1152  # MPEG-1 Layer III
_BITRATES_KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0)
_SAMPLE_RATES = (44100, 48000, 32000, 0)
_XING_TOC_SIZE = 100
_TAG_CRC_SPAN = 190  # the LAME tag CRC covers the first 190 bytes of the header frame
_COPY_CHUNK = 1 << 22


class Mp3JoinError(ValueError):
    """The segments cannot be joined as asked (not MPEG-1 Layer III, no usable join frame, bad header)."""


@dataclass(frozen=True)
class _Header:
    frame_bytes: int
    side_info_bytes: int
    crc_bytes: int
    sample_rate: int
    channels: int

    @property
    def data_start(self) -> int:
        """Offset of the main-data area within the frame."""
        return 4 + self.crc_bytes + self.side_info_bytes


def _parse_header(raw: bytes, where: str) -> _Header:
    h = int.from_bytes(raw[:4], "big")
    if len(raw) < 4 or h >> 21 != 0x7FF:
        raise Mp3JoinError(f"{where}: no MPEG frame sync")
    version, layer = (h >> 19) & 3, (h >> 17) & 3
    if version != 3 or layer != 1:
        raise Mp3JoinError(f"{where}: not MPEG-1 Layer III (version bits {version}, layer bits {layer})")
    bitrate = _BITRATES_KBPS[(h >> 12) & 15] * 1000
    rate = _SAMPLE_RATES[(h >> 10) & 3]
    if not bitrate or not rate:
        raise Mp3JoinError(f"{where}: free-format or reserved bitrate/sample-rate index")
    channels = 1 if (h >> 6) & 3 == 3 else 2
    return _Header(
        frame_bytes=144 * bitrate // rate + ((h >> 9) & 1),
        side_info_bytes=17 if channels == 1 else 32,
        crc_bytes=0 if (h >> 16) & 1 else 2,
        sample_rate=rate,
        channels=channels,
    )


def frame_offsets(path: Path) -> np.ndarray:
    """Byte offsets of every frame in ``path`` plus the file size as a last entry (so sizes are diffs).

    The file is read in ``_COPY_CHUNK`` pieces (not a read per frame header) and each distinct header word is
    parsed once: a CBR stream has two (with and without the padding byte).
    """
    offsets: list[int] = []
    size = os.path.getsize(path)
    lengths: dict[bytes, int] = {}
    with open(path, "rb") as fh:
        pos, base, buf = 0, 0, b""
        while pos < size:
            at = pos - base
            if at + 4 > len(buf):
                fh.seek(pos)
                base, buf, at = pos, fh.read(_COPY_CHUNK), 0
            head = buf[at:at + 4]
            step = lengths.get(head)
            if step is None:
                step = lengths[head] = _parse_header(head, f"'{path}' at byte {pos}").frame_bytes
            offsets.append(pos)
            pos += step
    if pos != size:
        raise Mp3JoinError(f"'{path}': the last frame is truncated ({pos - size} bytes missing)")
    offsets.append(size)
    return np.asarray(offsets, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- CRC-16


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        table[i] = c
    return table


_TABLE = _crc_table()
_LANE = 1024  # bytes per lane of the vectorized CRC


def _zero_shift_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Tables for the linear map 'run the CRC over n zero bytes' (CRC-16/ARC has no init or xorout)."""
    state = (1 << np.arange(16, dtype=np.uint32)).astype(np.uint32)
    for _ in range(n):
        state = (state >> 8) ^ _TABLE[state & 0xFF]
    bits = ((np.arange(256, dtype=np.uint32)[:, None] >> np.arange(8, dtype=np.uint32)) & 1).astype(bool)
    lo = np.bitwise_xor.reduce(np.where(bits, state[:8], 0), axis=1)
    hi = np.bitwise_xor.reduce(np.where(bits, state[8:], 0), axis=1)
    return lo.astype(np.uint32), hi.astype(np.uint32)


_SHIFT_LANE = _zero_shift_tables(_LANE)


def _shift(crc: int, tables: tuple[np.ndarray, np.ndarray]) -> int:
    return int(tables[0][crc & 0xFF] ^ tables[1][crc >> 8])


def crc16(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-16/ARC (polynomial 0x8005 reflected, init 0), the CRC of the LAME tag, continued from ``crc``.

    The bulk is computed as many independent lanes at once and combined with the CRC's linearity:
    crc(A + B) = shift(crc(A), len(B)) ^ crc(B).
    """
    if _native.lib is not None:  # the same table-driven CRC in C (msdsp.c), ~20x faster
        return _native.crc16(data, crc)
    buf = np.frombuffer(data, dtype=np.uint8)
    whole = len(buf) // _LANE * _LANE
    if whole:
        lanes = buf[:whole].reshape(-1, _LANE)
        state = np.zeros(len(lanes), dtype=np.uint32)
        for i in range(_LANE):
            state = (state >> 8) ^ _TABLE[(state ^ lanes[:, i]) & 0xFF]
        for lane_crc in state.tolist():
            crc = _shift(crc, _SHIFT_LANE) ^ lane_crc
    for byte in buf[whole:].tolist():
        crc = (crc >> 8) ^ int(_TABLE[(crc ^ byte) & 0xFF])
    return crc


# ------------------------------------------------------------------------------------------ Xing/LAME


@dataclass(frozen=True)
class LameTag:
    """What the header frame says about the stream."""

    frames: int  # audio frames (the header frame excluded)
    bytes: int  # whole file
    delay: int  # encoder delay in samples (decoders also skip their own 529)
    padding: int  # samples of padding at the end


@dataclass(frozen=True)
class JoinResult:
    """The header written and, per join, the program frame and the reservoir bytes carried over."""

    tag: LameTag
    joins: tuple[tuple[int, int], ...]


def _tag_offset(frame: bytes) -> int:
    head = _parse_header(frame, "header frame")
    off = head.data_start
    if frame[off:off + 4] not in (b"Info", b"Xing"):
        raise Mp3JoinError("the first frame is not a Xing/Info header (encode with a Xing header)")
    if int.from_bytes(frame[off + 4:off + 8], "big") & 0xF != 0xF:
        raise Mp3JoinError("the Xing header lacks frames, bytes, TOC or quality fields")
    return off


def read_tag(path: Path) -> LameTag:
    """The frame count, size, encoder delay and padding recorded in ``path``'s Xing/LAME header."""
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        frame = fh.read(_parse_header(head, f"'{path}'").frame_bytes)
    off = _tag_offset(frame)
    dp = int.from_bytes(frame[off + 141:off + 144], "big")
    return LameTag(
        frames=int.from_bytes(frame[off + 8:off + 12], "big"),
        bytes=int.from_bytes(frame[off + 12:off + 16], "big"),
        delay=dp >> 12,
        padding=dp & 0xFFF,
    )


# ---------------------------------------------------------------------------------------------- joining


@dataclass(frozen=True)
class SegmentFile:
    """One encoded segment: its file (with a Xing header frame) and the program frame its input began at.

    ``start_frame`` is the segment's first input sample divided by 1152 (segments start on the frame grid),
    so the segment's audio frame ``k`` is the program's frame ``start_frame + k``. ``join_from`` and
    ``join_to`` bound the program frames at which this segment may take over from the previous one.
    """

    path: Path
    start_frame: int
    join_from: int = 0
    join_to: int = 0


class _Segment:
    def __init__(self, spec: SegmentFile) -> None:
        self.spec = spec
        self.offsets = frame_offsets(spec.path)  # [header frame, audio frames..., file size]
        with open(spec.path, "rb") as fh:
            self.header = _parse_header(fh.read(4), f"'{spec.path}'")

    @property
    def audio_frames(self) -> int:
        return len(self.offsets) - 2

    def local(self, program_frame: int) -> int:
        return program_frame - self.spec.start_frame

    def frame_pos(self, local: int) -> int:
        """Byte offset of audio frame ``local`` (the header frame is frame -1)."""
        return int(self.offsets[local + 1])

    def main_data_begin(self, fh: object, local: int) -> int:
        pos = self.frame_pos(local)
        fh.seek(pos)  # type: ignore[attr-defined]
        raw = fh.read(4 + 2 + 2)  # type: ignore[attr-defined]
        head = _parse_header(raw, f"'{self.spec.path}' frame {local}")
        at = 4 + head.crc_bytes
        if head.crc_bytes:
            raw += fh.read(2)  # type: ignore[attr-defined]
        return (raw[at] << 1) | (raw[at + 1] >> 7)

    def data_tail_spans(self, local: int, n: int) -> list[tuple[int, int]]:
        """File byte ranges holding the last ``n`` main-data bytes before audio frame ``local``, in order."""
        spans: list[tuple[int, int]] = []
        k = local - 1
        while n > 0:
            if k < 0:
                raise Mp3JoinError(f"'{self.spec.path}': the bit reservoir reaches before the first frame")
            start, end = self.frame_pos(k), self.frame_pos(k + 1)
            payload_start = start + self.header.data_start
            take = min(n, end - payload_start)
            spans.append((end - take, end))
            n -= take
            k -= 1
        return spans[::-1]


def _choose_join(prev: _Segment, nxt: _Segment, fh_prev: object, fh_next: object) -> tuple[int, int]:
    """The first program frame in the next segment's window where the previous one has room for its reservoir."""
    lo, hi = nxt.spec.join_from, nxt.spec.join_to
    for j in range(lo, hi + 1):
        kp, kn = prev.local(j), nxt.local(j)
        if not (1 <= kp < prev.audio_frames and 1 <= kn < nxt.audio_frames):
            continue
        need = nxt.main_data_begin(fh_next, kn)
        if prev.main_data_begin(fh_prev, kp) >= need:
            return j, need
    raise Mp3JoinError(f"no frame in {lo}..{hi} where '{nxt.spec.path}' can follow '{prev.spec.path}'")


def _read_spans(fh: object, spans: Sequence[tuple[int, int]]) -> bytes:
    out = bytearray()
    for a, b in spans:
        fh.seek(a)  # type: ignore[attr-defined]
        out += fh.read(b - a)  # type: ignore[attr-defined]
    return bytes(out)


def _copy(fh: object, start: int, end: int) -> Iterator[bytes]:
    fh.seek(start)  # type: ignore[attr-defined]
    left = end - start
    while left > 0:
        chunk = fh.read(min(_COPY_CHUNK, left))  # type: ignore[attr-defined]
        if not chunk:
            raise Mp3JoinError("a segment file ended early while joining")
        left -= len(chunk)
        yield chunk


def join_segments(segments: Sequence[SegmentFile], out_path: Path, *, total_samples: int) -> JoinResult:
    """Join encoded segments (in program order) into ``out_path`` with a rewritten Xing/LAME header.

    ``total_samples`` is the length of the program: the header's padding is set so that gapless decoders
    return exactly that many samples. Returns the header written.
    """
    if not segments:
        raise Mp3JoinError("nothing to join")
    segs = [_Segment(s) for s in segments]
    handles = [open(s.spec.path, "rb") for s in segs]  # noqa: SIM115 - closed in finally
    try:
        # Per segment: the audio frames it contributes [first, last) in its own numbering, and the
        # reservoir bytes the previous segment's last frames must carry for its first frame.
        plan: list[tuple[int, int, bytes]] = []
        joins: list[tuple[int, int]] = []
        first = 0
        for i, seg in enumerate(segs):
            last = seg.audio_frames
            carry = b""
            if i + 1 < len(segs):
                j, need = _choose_join(seg, segs[i + 1], handles[i], handles[i + 1])
                joins.append((j, need))
                last = seg.local(j)
                nxt = segs[i + 1]
                carry = _read_spans(handles[i + 1], nxt.data_tail_spans(nxt.local(j), need)) if need else b""
            plan.append((first, last, carry))
            if i + 1 < len(segs):
                first = segs[i + 1].local(j)

        head_frame = bytearray(_read_spans(handles[0], [(0, segs[0].frame_pos(0))]))
        off = _tag_offset(bytes(head_frame))
        delay = int.from_bytes(head_frame[off + 141:off + 144], "big") >> 12
        frames = sum(last - first for first, last, _ in plan)
        padding = frames * FRAME_SAMPLES - delay - total_samples
        if not 0 <= padding < 1 << 12:
            raise Mp3JoinError(
                f"the joined stream holds {frames} frames for {total_samples} samples (delay {delay}): "
                f"padding {padding} does not fit the LAME tag")
        part = out_path.with_name(f".{out_path.name}.join")
        crc = 0
        body_sizes: list[np.ndarray] = []
        with open(part, "wb") as out:
            out.write(head_frame)  # rewritten below once sizes and CRC are known
            for (first, last, carry), seg, fh in zip(plan, segs, handles, strict=True):
                body_sizes.append(np.diff(seg.offsets[first + 1:last + 2]))
                spans = seg.data_tail_spans(last, len(carry)) if carry else []
                cut = spans[0][0] if spans else seg.frame_pos(last)
                for piece in _copy(fh, seg.frame_pos(first), cut):  # streamed: memory does not grow with length
                    crc = crc16(piece, crc)
                    out.write(piece)
                if spans:
                    # Overwrite the unused tail of this segment's last main data with the reservoir bytes
                    # the next segment's first frame points back to (headers between them kept).
                    tail = bytearray(_read_spans(fh, [(cut, seg.frame_pos(last))]))
                    taken = 0
                    for a, b in spans:
                        tail[a - cut:b - cut] = carry[taken:taken + b - a]
                        taken += b - a
                    crc = crc16(bytes(tail), crc)
                    out.write(tail)
            size = out.tell()
            sizes = np.concatenate(body_sizes)
            positions = len(head_frame) + np.concatenate([[0], np.cumsum(sizes)])
            toc = [0] + [min(255, int(256 * int(positions[i * frames // _XING_TOC_SIZE]) // size))
                         for i in range(1, _XING_TOC_SIZE)]
            head_frame[off + 8:off + 12] = frames.to_bytes(4, "big")
            head_frame[off + 12:off + 16] = size.to_bytes(4, "big")
            head_frame[off + 16:off + 16 + _XING_TOC_SIZE] = bytes(toc)
            head_frame[off + 141:off + 144] = ((delay << 12) + padding).to_bytes(3, "big")
            head_frame[off + 148:off + 152] = size.to_bytes(4, "big")  # music length: the whole file
            head_frame[off + 152:off + 154] = crc.to_bytes(2, "big")  # music CRC: every audio frame
            head_frame[off + 154:off + 156] = crc16(bytes(head_frame[:_TAG_CRC_SPAN])).to_bytes(2, "big")
            out.seek(0)
            out.write(head_frame)
        os.replace(part, out_path)
        return JoinResult(LameTag(frames=frames, bytes=size, delay=delay, padding=padding), tuple(joins))
    except BaseException:
        Path(out_path.with_name(f".{out_path.name}.join")).unlink(missing_ok=True)
        raise
    finally:
        for fh in handles:
            fh.close()
