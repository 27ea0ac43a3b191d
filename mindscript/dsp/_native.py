"""The C kernels of mindscript.dsp (native/dsp/msdsp.c, built for this CPU by `make setup`), through ctypes.

The inner loops run there when the library is built: the loudness meter's K-weighting with its per-step
sums of squares (:mod:`.loudness`), the true-peak envelope and its interpolator's FIR (:mod:`.truepeak`), the
limiter's whole gain computer and output (:mod:`.limiter`: reductions, holds, attack averages, release, gain),
the master's mix of one block (voice, bed and tones in one pass, :class:`mindscript.master.Mixer`) and the
CRC-16 of joined MP3 segments (:mod:`mindscript.mp3frames`). Each module keeps its numpy code and runs it where
the library is missing, did not build, or ``DSP_KERNELS=numpy``; both give the same figures (the tests hold
them to each other). ctypes releases the GIL for each call, so the meter threads of :mod:`mindscript.parts`
run their kernels on both cores. :func:`kernels` says which runs.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import numpy as np

__all__ = ["LIBRARY", "crc16", "envelope", "kernels", "kweight", "lib", "limit", "mix"]

log = logging.getLogger(__name__)

#: written by tools/build_dsp.py (make setup); absent where no C compiler was found
LIBRARY = Path(__file__).resolve().parent.parent / "_native" / "libmsdsp.so"
_ABI = 4
_P, _I64, _INT, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "ms_abi_version": (_INT, []),
    "ms_kweight": (None, [_P, _I64, _INT, _P, _P, _P, _I64, _P, _P, _P]),
    "ms_mix": (None, [_P, _I64, _P, ctypes.c_float, _P, _P, _INT, _P, _P]),
    "ms_crc16": (ctypes.c_uint32, [_P, _I64, ctypes.c_uint32]),
    "ms_envelope": (ctypes.c_float, [_P, _I64, _INT, _INT] + [ctypes.c_float] * 5 + [_P, _P, _P]),
    "ms_limit": (_I64, [_P, _I64, _P, _I64, _I64, ctypes.c_float, _D, _P, _P, _I64, _I64, _INT, _INT, _INT, _D, _D,
                        _D, _P, _INT, _P, _P, _P, _P]),
}


def _load() -> ctypes.CDLL | None:
    choice = os.environ.get("DSP_KERNELS", "native").strip().lower() or "native"
    if choice not in {"native", "numpy"}:
        raise ValueError(f"DSP_KERNELS must be 'native' or 'numpy', got {choice!r}")
    if choice == "numpy" or not LIBRARY.exists():
        return None
    try:
        found = ctypes.CDLL(str(LIBRARY))
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(found, name)
            fn.restype, fn.argtypes = restype, argtypes
        if found.ms_abi_version() != _ABI:
            raise OSError(f"ABI version {found.ms_abi_version()}, expected {_ABI}: rebuild with `make setup`")
    except (OSError, AttributeError) as exc:
        log.warning("DSP kernels in %s are not usable (%s); the numpy kernels run", LIBRARY, exc)
        return None
    return found


lib: ctypes.CDLL | None  # loaded on first use (nothing reads the environment at import time)


def __getattr__(name: str) -> object:
    if name == "lib":
        globals()["lib"] = found = _load()
        return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _loaded() -> ctypes.CDLL | None:
    """``lib``, loaded now if this is its first use."""
    return globals()["lib"] if "lib" in globals() else __getattr__("lib")  # type: ignore[return-value]


def kernels() -> str:
    """Which kernels run: ``native: <path>`` or ``numpy``."""
    return f"native: {LIBRARY}" if _loaded() is not None else "numpy"


def _lib() -> ctypes.CDLL:
    """The loaded library, for the wrappers below (callers check ``lib`` first)."""
    found = _loaded()
    assert found is not None, "the DSP kernels library is not loaded"
    return found


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def kweight(x: np.ndarray, sos: np.ndarray, zi: np.ndarray, bounds: np.ndarray,
            carry: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K-weight float32 frames ``x`` ``(n, channels)`` from state ``zi`` ``(2, channels, 2)``.

    ``bounds`` (ascending from 0, within ``0 .. n``) cut the squared output into steps; ``carry`` (one per channel)
    starts the first step's sum. Returns the sums of squares per step ``(channels, len(bounds) - 1)``, the
    squares after the last bound ``(channels, n - bounds[-1])`` and the next ``zi``.
    """
    lib = _lib()
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, channels = x.shape
    state = np.ascontiguousarray(np.swapaxes(zi, 0, 1), dtype=np.float64)  # (channels, sections, 2)
    b = np.ascontiguousarray(bounds, dtype=np.int64)
    if len(b) == 0 or b[0] != 0:
        raise ValueError(f"bounds must start at frame 0, got {b[:1]}")
    sums = np.empty((channels, len(b) - 1), dtype=np.float64)
    tail = np.empty((channels, n - int(b[-1])), dtype=np.float64)
    coeffs = np.ascontiguousarray(sos, dtype=np.float64)
    start = np.ascontiguousarray(carry, dtype=np.float64)
    lib.ms_kweight(_ptr(x), n, channels, _ptr(coeffs), _ptr(state), _ptr(b), len(b), _ptr(start), _ptr(sums),
                   _ptr(tail))
    return sums, tail, np.ascontiguousarray(np.swapaxes(state, 0, 1))


def envelope(rows: np.ndarray, step: int, floor: float, bounds: tuple[float, float, float, float],
             taps: np.ndarray) -> tuple[np.ndarray, float]:
    """The true-peak envelope of ``rows`` ``(channels, n)`` with a floor, and its max (see msdsp.c).

    ``bounds``: the L1 gain, ``1 + 2 SLOPE_GAIN``, ``CURVE_GAIN`` and the rounding margin of truepeak.py.
    """
    lib = _lib()
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    channels, n = rows.shape
    env = np.empty(max(0, n - (taps.shape[1] - 1)), dtype=np.float32)
    scratch = np.empty(n, dtype=np.float32)
    top = lib.ms_envelope(_ptr(rows), n, channels, step, float(floor), *map(float, bounds), _ptr(taps), _ptr(env),
                          _ptr(scratch))
    if top < 0:
        raise ValueError(f"step must be within 1..2048, got {step}")
    return env, float(top)


def limit(required: np.ndarray, env: np.ndarray, silence: int, holds: np.ndarray, delay: np.ndarray, *,
          ceiling: np.float32, ceiling_db: float, width: int, look: int, b1: int, b2: int, released: float, a: float,
          snap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    """The limiter's reductions, holds, attack, release and output for one call (see msdsp.c ``ms_limit``).

    Returns the output frames (``(n, channels)``, none when n <= 0), every required reduction (the state's, then
    this call's and ``silence`` zeros), every hold (the state's, then this call's) and the released reduction
    at the last output frame (None when nothing was output).
    """
    lib = _lib()
    prev = np.ascontiguousarray(required, dtype=np.float64)
    e = np.ascontiguousarray(env, dtype=np.float32)
    d = np.ascontiguousarray(delay, dtype=np.float32)
    r = np.empty(len(prev) + len(e) + silence, dtype=np.float64)
    total = len(holds) + max(0, len(r) - width + 1)
    all_holds = np.empty(total, dtype=np.float64)
    all_holds[:len(holds)] = holds
    n = total - look
    out = np.empty((max(0, n), d.shape[1]), dtype=np.float32)
    u_last = ctypes.c_double(0.0)
    scratch = np.empty(2 * (total + 2), dtype=np.float64)
    dq = np.empty(len(r), dtype=np.int64)
    got = lib.ms_limit(_ptr(prev), len(prev), _ptr(e), len(e), silence, float(ceiling), ceiling_db, _ptr(r),
                       _ptr(all_holds), len(holds), width, look, b1, b2, released, a, snap, _ptr(d), d.shape[1],
                       _ptr(out), ctypes.byref(u_last), _ptr(scratch), _ptr(dq))
    if got != n:
        raise ValueError(f"averages of {b1} and {b2} do not span a look-ahead of {look} frames")
    return out, r, all_holds, (u_last.value if n > 0 else None)


def _f32(a: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if a is None:
        return None
    out = np.ascontiguousarray(a, dtype=np.float32)
    if out.shape != shape:
        raise ValueError(f"expected shape {shape}, got {out.shape}")
    return out


def mix(n: int, *, voice: np.ndarray | None, voice_gain: float, bed: np.ndarray | None, bed_gain: np.ndarray | None,
        tones: list[tuple[np.ndarray, np.ndarray]], tone_gain: np.ndarray | None) -> np.ndarray:
    """``voice * voice_gain + bed * bed_gain + tone_gain * sum(tones)`` as float32 ``(n, 2)`` (see msdsp.c).

    ``voice`` is ``(n,)`` or ``(n, 1)``, ``bed`` ``(n, 2)`` with ``bed_gain`` ``(n,)``, each tone a (left, right)
    pair of ``(n,)`` channels; the same float32 operations in the same order as the numpy mix.
    """
    lib = _lib()
    v = _f32(None if voice is None else voice.reshape(-1), (n,))
    b, g = _f32(bed, (n, 2)), _f32(bed_gain, (n,))
    if (b is None) != (g is None):
        raise ValueError("bed and bed_gain go together")
    channels = [np.ascontiguousarray(c, dtype=np.float32) for pair in tones for c in pair]
    if any(c.shape != (n,) for c in channels):
        raise ValueError(f"tone channels must have shape ({n},), got {[c.shape for c in channels]}")
    pointers = (ctypes.c_void_p * max(1, len(channels)))(*[_ptr(c) for c in channels])
    tg = _f32(tone_gain, (n,))
    out = np.empty((n, 2), dtype=np.float32)
    lib.ms_mix(_ptr(out), n, None if v is None else _ptr(v), float(voice_gain), None if b is None else _ptr(b),
               None if g is None else _ptr(g), len(tones), pointers, None if tg is None else _ptr(tg))
    return out


def crc16(data: bytes | bytearray | memoryview, crc: int) -> int:
    """CRC-16/ARC of ``data`` continued from ``crc`` (see msdsp.c)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    return int(_lib().ms_crc16(_ptr(buf) if len(buf) else None, len(buf), crc))
