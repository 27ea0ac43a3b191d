"""Decibel/linear conversions and channel layout helpers."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["db_to_gain", "gain_to_db", "mono_to_stereo"]


def db_to_gain(db: float) -> float:
    """Convert a level change in dB to a linear amplitude gain (``10 ** (db / 20)``); ``-inf`` gives 0.0."""
    db = float(db)
    if math.isnan(db) or db == math.inf:
        raise ValueError(f"db must be finite or -inf, got {db!r}")
    if db == -math.inf:
        return 0.0
    return float(10.0 ** (db / 20.0))


def gain_to_db(g: float) -> float:
    """Convert a linear amplitude gain to dB (``20 * log10(g)``); a gain of 0 gives ``-inf``."""
    g = float(g)
    if math.isnan(g) or g < 0.0 or g == math.inf:
        raise ValueError(f"gain must be a finite number >= 0, got {g!r}")
    if g == 0.0:
        return -math.inf
    return 20.0 * math.log10(g)


def mono_to_stereo(x: np.ndarray) -> np.ndarray:
    """Duplicate a mono signal, shape ``(n,)`` or ``(n, 1)``, into a float32 ``(n, 2)`` array.

    A signal that is already ``(n, 2)`` is returned as float32 unchanged, so callers can normalize any
    voice or bed to stereo without branching.
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"x must be a numpy array, got {type(x).__name__}")
    if x.ndim == 1:
        mono = x
    elif x.ndim == 2 and x.shape[1] == 1:
        mono = x[:, 0]
    elif x.ndim == 2 and x.shape[1] == 2:
        return np.ascontiguousarray(x, dtype=np.float32)
    else:
        raise ValueError(f"x must have shape (n,), (n, 1) or (n, 2), got shape {x.shape}")
    mono = np.asarray(mono, dtype=np.float32)
    return np.repeat(mono[:, None], 2, axis=1)
