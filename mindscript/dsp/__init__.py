"""Pure numpy/scipy DSP: tones, envelopes, gains, ducking, loudness (BS.1770-4 / EBU R128), true peak and
a true-peak limiter.

Arrays are float32 ``(frames, channels)``. Nothing here keeps hidden state: parameters are frozen
dataclasses, and streaming functions take a state value and return the next one.
"""

from .ducking import DuckParams, duck_curve, duck_gain_block, speech_activity
from .envelopes import equal_power_crossfade, fade_gain
from .gain import db_to_gain, gain_to_db, mono_to_stereo
from .limiter import (
    LimiterParams,
    LimiterState,
    limiter_flush,
    limiter_init,
    limiter_latency,
    limiter_process,
)
from .loudness import (
    LoudnessStats,
    MeterState,
    integrated_loudness,
    k_weighting_sos,
    loudness_stats,
    meter_init,
    meter_result,
    meter_steps,
    meter_update,
)
from .tones import ToneParams, binaural, solfeggio, tone_block
from .truepeak import (
    TruePeakState,
    oversampled_peaks,
    true_peak_dbtp,
    truepeak_db,
    truepeak_flush,
    truepeak_init,
    truepeak_update,
)

__all__ = [
    "DuckParams",
    "LimiterParams",
    "LimiterState",
    "LoudnessStats",
    "MeterState",
    "ToneParams",
    "TruePeakState",
    "binaural",
    "db_to_gain",
    "duck_curve",
    "duck_gain_block",
    "equal_power_crossfade",
    "fade_gain",
    "gain_to_db",
    "integrated_loudness",
    "k_weighting_sos",
    "limiter_flush",
    "limiter_init",
    "limiter_latency",
    "limiter_process",
    "loudness_stats",
    "meter_init",
    "meter_result",
    "meter_steps",
    "meter_update",
    "mono_to_stereo",
    "oversampled_peaks",
    "solfeggio",
    "speech_activity",
    "tone_block",
    "true_peak_dbtp",
    "truepeak_db",
    "truepeak_flush",
    "truepeak_init",
    "truepeak_update",
]
