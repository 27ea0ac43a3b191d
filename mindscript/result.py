"""The render result contract (ARCHITECTURE.md): success with data and metadata, or an error object."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mindscript.errors import RenderError
from mindscript.job import RenderJob
from mindscript.layers import BackgroundBed, SkippedLayer, TonePlan
from mindscript.master import MasterOutcome
from mindscript.storage.base import StoredObject
from mindscript.voice import VoiceStem


def success(
    job: RenderJob,
    *,
    stored: StoredObject,
    outcome: MasterOutcome,
    voice: VoiceStem | None,
    bed: BackgroundBed | None,
    tones: Sequence[TonePlan],
    skipped: Sequence[SkippedLayer],
    warnings: Sequence[str],
    timings: dict[str, float],
) -> dict[str, Any]:
    q, plan = outcome.quality, outcome.plan
    used = (["voice"] if voice else []) + (["background"] if bed else []) + [t.kind for t in tones]
    metadata: dict[str, Any] = {
        "jobId": job.id,
        "durationSeconds": q.duration_s,
        "format": plan.fmt,
        "bitrateKbps": plan.bitrate_kbps if plan.fmt == "mp3" else None,
        "sampleRate": q.sample_rate,
        "channels": q.channels,
        "sizeBytes": stored.size,
        "sha256": stored.sha256,
        "loudness": {
            "targetLufs": plan.target_lufs,
            "mode": "program" if plan.program_mode else "voice",
            "integratedLufs": q.integrated_lufs,
            "speechLufs": q.speech_lufs,
            "truePeakDbtp": q.true_peak_dbtp,
            "ceilingDbtp": plan.ceiling_dbtp,
            "lraLu": q.lra_lu,
            "aimLufs": plan.aim_lufs,
            "masterAttempts": outcome.attempts,
        },
        "layers": {
            "used": used,
            "skipped": [{"layer": s.layer, "reason": s.reason} for s in skipped],
            "voice": None if voice is None else {"startSeconds": round(plan.voice_start_frame / plan.sample_rate, 3),
                                                 "durationSeconds": round(voice.duration_s, 3),
                                                 "speechSeconds": voice.speech_s,
                                                 "gainDb": round(plan.voice_gain_db, 2)},
            "background": None if bed is None else {"source": bed.source, "trackSeconds": round(bed.duration_s, 3),
                                                    "looped": bed.loop and bed.frames < plan.total_frames,
                                                    "gainDb": round(plan.bed_gain_db, 2)},
            "tones": [{"kind": t.kind, "leftHz": t.left_hz, "rightHz": t.right_hz, "levelLufs": t.level_lufs}
                      for t in tones],
        },
        "tts": None if voice is None else {
            "provider": voice.provider,
            "model": voice.model,
            "voice": voice.voice,
            "characters": voice.characters,
            "chunks": voice.chunks,
            "cacheHits": voice.cache_hits,
            "estimatedCostUsd": voice.estimated_cost_usd,
        },
        "storage": {"backend": stored.backend, "bucket": stored.bucket, "key": stored.key,
                    "sizeBytes": stored.size, "sha256": stored.sha256, "contentType": stored.content_type,
                    "urlKind": stored.url_kind, "expiresAt": stored.expires_at,
                    "fallbackFrom": stored.fallback_from, "fallbackReason": stored.fallback_reason},
        "warnings": list(warnings) + ([f"stored in fallback bucket {stored.bucket!r}: {stored.fallback_reason}"]
                                      if stored.fallback_from else []),
        "timings": timings,
    }
    return {"success": True, "data": {"outputUrl": stored.url, "storagePath": stored.key, "metadata": metadata}}


def failure(error: BaseException, *, stage: str | None = None) -> dict[str, Any]:
    if isinstance(error, RenderError):
        body = error.to_dict()
        body["stage"] = body["stage"] or stage
    else:
        # Unexpected errors: the type and message only (no traceback, no locals that might hold secrets).
        body = {"code": "INTERNAL_ERROR", "message": f"{type(error).__name__}: {error}", "stage": stage}
    return {"success": False, "error": body}
