"""Progress plumbing between the flow and its tasks, and the Prefect sinks (artifact, events).

Tasks run in threads of the flow's process, so a tracker is found by job id in a process-local registry
instead of being passed as a task argument (trackers hold locks: unhashable, and they would poison cache
keys).
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from typing import Any

from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.events import emit_event

from mindscript.progress import ProgressEvent, ProgressSink, ProgressTracker, Stage

log = logging.getLogger(__name__)
_registry: dict[str, ProgressTracker] = {}
_lock = threading.Lock()


def register(job_id: str, tracker: ProgressTracker) -> None:
    with _lock:
        _registry[job_id] = tracker


def unregister(job_id: str) -> None:
    with _lock:
        _registry.pop(job_id, None)


def tracker_for(job_id: str) -> ProgressTracker:
    """The job's tracker, or a silent one when a task runs outside ``render_job`` (e.g. in a test)."""
    with _lock:
        return _registry.get(job_id) or ProgressTracker()


def reporter(job_id: str, stage: Stage):  # noqa: ANN201 - a small callable
    """``(fraction, message)`` callback that reports sub-progress of ``stage`` for a job."""
    tracker = tracker_for(job_id)

    def report(fraction: float, message: str) -> None:
        tracker.update(fraction, message, stage=stage)

    return report


def artifact_key(kind: str, job_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return f"{kind}-{re.sub(r'[^a-z0-9-]+', '-', job_id.lower()).strip('-')}"[:100]


def progress_artifact_sink(job_id: str) -> ProgressSink:
    """Creates the run's progress artifact and keeps it at the tracker's percentage."""
    artifact_id: uuid.UUID = create_progress_artifact(
        progress=0.0, key=artifact_key("render-progress", job_id), description="Render progress"
    )

    def sink(event: ProgressEvent) -> None:
        update_progress_artifact(artifact_id, progress=event.percent,
                                 description=f"{event.stage.value}: {event.message}")

    return sink


def event_sink(job_id: str) -> ProgressSink:
    """Emits a Prefect event per stage completion (and on failure/completion) for automations."""
    resource = {"prefect.resource.id": f"mindscript.render-job.{job_id}", "prefect.resource.name": job_id}

    def sink(event: ProgressEvent) -> None:
        if event.kind == "progress" or event.kind == "started":
            return
        emit_event(
            event=f"mindscript.render.{event.kind.replace('_', '-')}",
            resource=resource,
            payload={"stage": event.stage.value, "percent": event.percent, "message": event.message,
                     "stageSeconds": event.stage_elapsed_s},
        )

    return sink


def quality_table(job_id: str, metadata: dict[str, Any]) -> None:
    """The delivered file's figures as a table artifact, so the UI shows them per run."""
    loud = metadata["loudness"]
    rows = [
        ("duration", f"{metadata['durationSeconds']:.2f} s"),
        ("format", f"{metadata['format']} {metadata['sampleRate']} Hz, {metadata['channels']} ch"),
        ("integrated loudness", f"{loud['integratedLufs']:.2f} LUFS"),
        ("target", f"{loud['targetLufs']:g} LUFS ({loud['mode']}-anchored)"),
        ("speech loudness", "-" if loud["speechLufs"] is None else f"{loud['speechLufs']:.2f} LUFS"),
        ("true peak", f"{loud['truePeakDbtp']:.2f} dBTP (ceiling {loud['ceilingDbtp']:g})"),
        ("loudness range", f"{loud['lraLu']:.2f} LU"),
        ("layers used", ", ".join(metadata["layers"]["used"]) or "-"),
        ("layers skipped", "; ".join(f"{s['layer']}: {s['reason']}" for s in metadata["layers"]["skipped"]) or "-"),
        ("size", f"{metadata['sizeBytes']} bytes"),
    ]
    create_table_artifact(
        table=[{"measure": k, "value": v} for k, v in rows],
        key=artifact_key("render-quality", job_id),
        description="Measured on the delivered file (ITU-R BS.1770-4, 4x oversampled true peak)",
    )
