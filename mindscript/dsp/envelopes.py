"""Gain envelopes: program fades and crossfade laws.

Envelopes are functions of absolute frame indices, so a program rendered block by block gets exactly the
same gains as one rendered in a single call.
"""

from __future__ import annotations

import numpy as np

from ._checks import check_frames

__all__ = ["equal_power_crossfade", "fade_gain"]


def _half_hann(position: np.ndarray, length: int) -> np.ndarray:
    """Rising raised-cosine ``0.5 - 0.5 cos(pi * t)`` for ``t = position / length`` clipped to [0, 1].

    A raised cosine has zero slope at both ends, so neither the start of the fade nor its join with the
    unity-gain body produces an audible corner (a linear ramp clicks softly on sustained tones).
    """
    t = np.clip(position / float(length), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def fade_gain(
    start_frame: int, n_frames: int, total_frames: int, fade_in_frames: int, fade_out_frames: int
) -> np.ndarray:
    """Per-frame program fade gain for frames ``start_frame .. start_frame + n_frames - 1``.

    The fade-in rises from 0 at frame 0 to 1 at frame ``fade_in_frames``; the fade-out falls from 1 at
    frame ``total_frames - fade_out_frames`` to 0 at frame ``total_frames`` (so the last frame is already
    almost silent). Both are raised-cosine (half-Hann) curves. When a short program makes the fades
    overlap, the two curves are multiplied: the gain stays smooth and never exceeds either fade. Frames at
    or beyond ``total_frames`` get gain 0.

    Returns a float32 array of shape ``(n_frames,)``.
    """
    start_frame = check_frames(start_frame, "start_frame")
    n_frames = check_frames(n_frames, "n_frames")
    total_frames = check_frames(total_frames, "total_frames")
    fade_in_frames = check_frames(fade_in_frames, "fade_in_frames")
    fade_out_frames = check_frames(fade_out_frames, "fade_out_frames")
    gain = np.ones(n_frames, dtype=np.float32)
    end = start_frame + n_frames
    # Only the frames inside a fade are computed: most blocks of a long program are all unity gain.
    if fade_in_frames > 0 and start_frame < fade_in_frames:
        m = min(end, fade_in_frames) - start_frame
        idx = np.arange(start_frame, start_frame + m, dtype=np.float64)
        gain[:m] *= _half_hann(idx, fade_in_frames).astype(np.float32)
    out_start = total_frames - fade_out_frames
    if fade_out_frames > 0 and end > out_start:
        lo = max(start_frame, out_start)
        idx = np.arange(lo, end, dtype=np.float64)
        # Distance to the end of the program: 0 at frame total_frames, fade_out_frames at the fade start.
        gain[lo - start_frame:] *= _half_hann(total_frames - idx, fade_out_frames).astype(np.float32)
    if end > total_frames:
        gain[max(0, total_frames - start_frame):] = 0.0
    return gain


def equal_power_crossfade(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power crossfade curves ``(fade_out, fade_in)`` of ``n`` frames each (float32).

    Uses the sine/cosine law, ``fade_out = cos(pi/2 * t)`` and ``fade_in = sin(pi/2 * t)`` with ``t``
    sampled at frame centres, so ``fade_out**2 + fade_in**2 == 1``: two uncorrelated signals (a loop
    seam of a music bed) keep constant power through the join, where a linear crossfade dips by 3 dB.
    """
    n = check_frames(n, "n")
    t = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    angle = 0.5 * np.pi * t
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
