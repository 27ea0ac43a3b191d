"""Boundary checks shared by the public DSP entry points.

Every public function validates its arrays once, here, with a message that quotes the offending value;
the internals then trust shapes and dtypes.
"""

from __future__ import annotations

import math

import numpy as np


def as_frames(samples: np.ndarray, name: str = "samples", *, channels: int | None = None) -> np.ndarray:
    """Return ``samples`` as a float32 ``(frames, channels)`` array or raise ``ValueError``."""
    if not isinstance(samples, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(samples).__name__}")
    if samples.ndim != 2:
        raise ValueError(f"{name} must be 2-D (frames, channels), got shape {samples.shape}")
    if samples.shape[1] < 1:
        raise ValueError(f"{name} must have at least one channel, got shape {samples.shape}")
    if channels is not None and samples.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s), got shape {samples.shape}")
    if not (np.issubdtype(samples.dtype, np.floating) or np.issubdtype(samples.dtype, np.integer)):
        raise ValueError(f"{name} must be a real numeric array, got dtype {samples.dtype}")
    return np.asarray(samples, dtype=np.float32)


def check_sample_rate(sample_rate: int, *, minimum: int = 1) -> int:
    """Validate a sample rate in Hz (a positive integer, at least ``minimum``)."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
        raise ValueError(f"sample_rate must be an integer number of Hz, got {sample_rate!r}")
    if sample_rate < minimum:
        raise ValueError(f"sample_rate must be >= {minimum} Hz, got {sample_rate}")
    return int(sample_rate)


def check_frames(value: int, name: str, *, minimum: int = 0) -> int:
    """Validate a frame count or index (an integer >= ``minimum``)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_finite(value: float, name: str) -> float:
    """Validate a finite real number."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out
