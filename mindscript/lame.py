"""LAME in this process, called through ctypes: built for this machine, or the ``lameenc`` wheel's.

The lameenc package's own API takes 16-bit input and cannot return the Xing/LAME tag frame that gapless
decoding needs, but its extension module links the whole of LAME 3.100 and exports its C API. Called
through ctypes (which releases the GIL for the length of every call), one encoder per thread runs in
parallel with the caller, with no subprocess, no pipe and none of the ffmpeg CLI's per-packet thread
hand-offs: 150 s of the benchmark's program took 1.73 s of CPU against 2.59 s through the bundled ffmpeg at
the same settings (CBR, quality 3, joint stereo). :func:`available` is False when no LAME library loads or
exports what is needed; callers then use ffmpeg.

Which LAME: ``LAME_LIBRARY`` (a libmp3lame shared library's path) when set; else the one `make setup` builds
from native/lame for this CPU (tools/build_lame.py: -O3, -march=native, LAME's SSE paths; ~20 % less CPU
than the wheel's here); else the wheel's. :func:`library` says which one runs.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

__all__ = ["LameStream", "available", "library"]

log = logging.getLogger(__name__)

# written by tools/build_lame.py (make setup); absent where no C compiler was found
BUILT_LIBRARY = Path(__file__).resolve().parent / "_native" / "libmp3lame.so"

_JOINT_STEREO, _MONO = 1, 3  # MPEG_mode
_VBR_OFF = 0
_P, _INT, _SIZE = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "lame_init": (_P, []),
    "lame_set_in_samplerate": (_INT, [_P, _INT]),
    "lame_set_num_channels": (_INT, [_P, _INT]),
    "lame_set_VBR": (_INT, [_P, _INT]),
    "lame_set_brate": (_INT, [_P, _INT]),
    "lame_set_quality": (_INT, [_P, _INT]),
    "lame_set_mode": (_INT, [_P, _INT]),
    "lame_set_bWriteVbrTag": (_INT, [_P, _INT]),
    "lame_set_write_id3tag_automatic": (None, [_P, _INT]),
    "lame_init_params": (_INT, [_P]),
    "lame_encode_buffer_interleaved_ieee_float": (_INT, [_P, _P, _INT, _P, _INT]),
    "lame_encode_buffer_ieee_float": (_INT, [_P, _P, _P, _INT, _P, _INT]),
    "lame_encode_flush": (_INT, [_P, _P, _INT]),
    "lame_get_lametag_frame": (_SIZE, [_P, _P, _SIZE]),
    "lame_close": (_INT, [_P]),
}


def _load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _candidates() -> list[tuple[str, str]]:
    """(where it comes from, path) in the order tried."""
    out = []
    configured = os.environ.get("LAME_LIBRARY", "").strip()
    if configured:
        out.append(("LAME_LIBRARY", configured))
    if BUILT_LIBRARY.exists():
        out.append(("built for this machine", str(BUILT_LIBRARY)))
    spec = importlib.util.find_spec("lameenc")
    if spec is not None and spec.origin:
        out.append(("lameenc wheel", spec.origin))
    return out


@functools.cache
def _chosen() -> tuple[ctypes.CDLL, str, str] | None:
    for origin, path in _candidates():
        try:
            return _load(path), origin, path
        except (OSError, AttributeError) as exc:
            log.warning("LAME from %s (%s) is not usable, trying the next: %s", origin, path, exc)
    return None


def _library() -> ctypes.CDLL | None:
    chosen = _chosen()
    return chosen[0] if chosen else None


def library() -> str:
    """Which LAME this process encodes with: ``"<origin>: <path>"``, or none (ffmpeg encodes then)."""
    chosen = _chosen()
    return f"{chosen[1]}: {chosen[2]}" if chosen else "none (MP3 is encoded by the bundled ffmpeg)"


def available() -> bool:
    """Whether LAME can run in this process (the lameenc wheel is installed and exports LAME's API)."""
    return _library() is not None


class LameStream:
    """One CBR MP3 stream: ``encode`` float32 ``(n, channels)`` blocks in [-1, 1], then ``flush`` and
    ``lametag`` (the Xing/LAME frame to write over the stream's first frame), then ``close``.

    Not thread-safe: one thread per stream. Every call releases the GIL while LAME works.
    """

    def __init__(self, *, sample_rate: int, channels: int, bitrate_kbps: int, quality: int = 3) -> None:
        lib = _library()
        if lib is None:
            raise RuntimeError("LAME is not available in this process (install the lameenc wheel)")
        self._lib = lib
        self.channels = channels
        self._gfp = lib.lame_init()
        if not self._gfp:
            raise MemoryError("lame_init failed")
        settings = (
            (lib.lame_set_in_samplerate, sample_rate), (lib.lame_set_num_channels, channels),
            (lib.lame_set_VBR, _VBR_OFF), (lib.lame_set_brate, bitrate_kbps), (lib.lame_set_quality, quality),
            (lib.lame_set_mode, _JOINT_STEREO if channels == 2 else _MONO), (lib.lame_set_bWriteVbrTag, 1),
        )
        for setter, value in settings:
            if setter(self._gfp, value) != 0:
                self.close()
                raise ValueError(f"LAME rejected {setter.__name__}({value!r})")
        lib.lame_set_write_id3tag_automatic(self._gfp, 0)  # no ID3 tags: the Xing frame comes first
        if lib.lame_init_params(self._gfp) < 0:
            self.close()
            raise ValueError(f"LAME rejected {sample_rate} Hz, {channels} channel(s), {bitrate_kbps} kbps")
        self._out = np.empty(0, dtype=np.uint8)

    def _buffer(self, frames: int) -> np.ndarray:
        need = frames * 5 // 4 + 7200  # lame.h: 1.25 * samples per channel + 7200 bytes is always enough
        if self._out.shape[0] < need:
            self._out = np.empty(need, dtype=np.uint8)
        return self._out

    def encode(self, block: np.ndarray) -> bytes:
        pcm = np.ascontiguousarray(block, dtype=np.float32)
        if pcm.ndim != 2 or pcm.shape[1] != self.channels:
            raise ValueError(f"block must have shape (n, {self.channels}), got {pcm.shape!r}")
        out = self._buffer(pcm.shape[0])
        if self.channels == 2:
            n = self._lib.lame_encode_buffer_interleaved_ieee_float(
                self._gfp, pcm.ctypes.data, pcm.shape[0], out.ctypes.data, out.shape[0])
        else:  # the interleaved entry point steps over two channels whatever the stream has
            n = self._lib.lame_encode_buffer_ieee_float(
                self._gfp, pcm.ctypes.data, pcm.ctypes.data, pcm.shape[0], out.ctypes.data, out.shape[0])
        if n < 0:
            raise RuntimeError(f"LAME failed to encode a block (error {n})")
        return out[:n].tobytes()

    def flush(self) -> bytes:
        out = self._buffer(0)
        n = self._lib.lame_encode_flush(self._gfp, out.ctypes.data, out.shape[0])
        if n < 0:
            raise RuntimeError(f"LAME failed to flush (error {n})")
        return out[:n].tobytes()

    def lametag(self) -> bytes:
        out = self._buffer(0)
        n = self._lib.lame_get_lametag_frame(self._gfp, out.ctypes.data, out.shape[0])
        if n == 0 or n > out.shape[0]:
            raise RuntimeError("LAME returned no Xing/LAME tag frame")
        return out[:n].tobytes()

    def close(self) -> None:
        if self._gfp:
            self._lib.lame_close(self._gfp)
            self._gfp = None
