"""The ``render_job`` flow, and ``python flows/render.py [JOB.json] [--output-dir DIR] [--json]``.

The flow only sequences: workspace, layers (voice, background and each tone concurrently), master, store,
result. A tone or background layer that fails is skipped with a warning; anything else fails the run.
"""

# No `from __future__ import annotations` here: Prefect pickles the flow function by value for served runs,
# and string annotations would then name classes its globals do not carry (RenderJob).
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python flows/render.py`: make the project root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if __name__ == "__main__":  # before Prefect is imported: it reads its logging settings at import
    from flows.cli import configure_environment

    configure_environment(sys.argv[1:])

from typing import Any

from prefect import flow, get_run_logger

from mindscript import result as result_mod
from mindscript import workspace as ws_mod
from mindscript.errors import RenderError
from mindscript.job import RenderJob
from mindscript.layers import SkippedLayer
from mindscript.progress import ProgressSink, ProgressTracker, Stage, log_sink, throttled
from mindscript.settings import get_settings
from mindscript.voice import uses_recording
from tasks import progress as progress_mod
from tasks import queue as queue_mod
from tasks.render import fetch_background, generate_voice, master_audio, plan_tone, store_output

EXTRA_SINKS: list[ProgressSink] = []  # the CLI adds its progress bar here


@flow(name="render_job", flow_run_name="render-{job.id}", validate_parameters=True, **queue_mod.HOOKS)
def render_job(job: RenderJob, queue_attempt: int | None = None) -> dict[str, Any]:
    """Render one meditation job end to end and return the result object (ARCHITECTURE.md).

    ``queue_attempt`` is set when the job comes from the queue (flows/ingest.py): the row is marked started,
    its lease renewed and its progress written; the state hooks write the result or the error.
    """
    settings = get_settings()
    logger = get_run_logger()
    lease = queue_mod.begin(job.id, queue_attempt)
    sinks = [log_sink(logger), throttled(progress_mod.progress_artifact_sink(job.id)),
             progress_mod.event_sink(job.id), *queue_mod.row_sinks(job.id, queue_attempt), *EXTRA_SINKS]
    tracker = ProgressTracker(sinks=sinks)
    progress_mod.register(job.id, tracker)
    tracker.start(Stage.INITIALIZING)
    ws_mod.sweep_stale(settings.work_dir)
    warnings = list(job.warnings())
    skipped: list[SkippedLayer] = []
    try:
        with ws_mod.workspace(settings.work_dir, job.id) as ws:
            layers = job.project.layers
            speaks = layers.voice.enabled and (bool(job.project.script_text.strip()) or uses_recording(job))
            voice_f = generate_voice.submit(job, str(ws)) if speaks else None
            bed_f = fetch_background.submit(job, str(ws)) if layers.background.enabled else None
            tone_fs = {k: plan_tone.submit(k, job) for k in ("solfeggio", "binaural") if getattr(layers, k).enabled}
            if layers.voice.enabled and voice_f is None:
                skipped.append(SkippedLayer("voice", "the script is empty"))

            tracker.start(Stage.DOWNLOADING_ASSETS)
            bed = _optional_layer(bed_f, "background", skipped, warnings)
            tracker.start(Stage.GENERATING_VOICE)
            voice = voice_f.result() if voice_f else None
            if voice:
                warnings.extend(voice.warnings)
            tracker.start(Stage.GENERATING_TONES)
            tones = [t for k, f in tone_fs.items() if (t := _optional_layer(f, k, skipped, warnings))]

            tracker.start(Stage.MIXING_AUDIO)
            outcome = master_audio.submit(job, str(ws), voice, bed, tones).result()
            warnings.extend(outcome.warnings)
            tracker.start(Stage.UPLOADING)
            stored = store_output.submit(job, str(ws / f"master.{job.output.format}")).result()
            tracker.complete(Stage.UPLOADING)
            result = result_mod.success(job, stored=stored, outcome=outcome, voice=voice, bed=bed, tones=tones,
                                        skipped=skipped, warnings=warnings, timings=tracker.timings())
        progress_mod.quality_table(job.id, result["data"]["metadata"])
        tracker.finish(f"Delivered {stored.key}")
        return result
    except BaseException as exc:
        stage = tracker.current.value if tracker.current else None
        if isinstance(exc, RenderError) and exc.stage is None:
            exc.stage = stage
        tracker.fail(str(exc) if isinstance(exc, RenderError) else f"{type(exc).__name__}", None)
        raise
    finally:
        lease.stop()
        progress_mod.unregister(job.id)


def _optional_layer(future: Any, name: str, skipped: list[SkippedLayer], warnings: list[str]) -> Any:
    """A layer whose failure does not sink the job: skip it and say why."""
    if future is None:
        return None
    value = future.result(raise_on_failure=False)
    if isinstance(value, BaseException):
        if not isinstance(value, RenderError):
            raise value
        skipped.append(SkippedLayer(name, value.message))
        warnings.append(f"{name} layer skipped: {value.message}")
        return None
    return value


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(sys.argv[1:]))
