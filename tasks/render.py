"""The render job's tasks. Each builds what it needs from settings, calls mindscript, returns a small ref.

Retries are declared here and apply only to ``TransientError`` (a rejected input or a corrupt file is
never retried). No task caches: every ref points into a per-run workspace that is deleted afterwards.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, cast

from prefect import task
from prefect.cache_policies import NO_CACHE

from mindscript import layers as layer_mod
from mindscript import master as master_mod
from mindscript import voice as voice_mod
from mindscript.errors import TransientError
from mindscript.job import RenderJob
from mindscript.layers import BackgroundBed, ToneKind, TonePlan
from mindscript.progress import Stage
from mindscript.services import build_services, build_storage, build_tts_factories
from mindscript.settings import get_settings
from mindscript.storage.base import CONTENT_TYPES, StorageReader, StoredObject, render_key
from mindscript.voice import VoiceStem
from tasks.progress import reporter
from tasks.storage import with_s3_block
from tasks.voice import voice_track


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only failures that may succeed later (``TransientError``)."""
    try:
        state.result()
    except TransientError:
        return True
    except BaseException:
        return False
    return False


@task(name="generate-voice", cache_policy=NO_CACHE)
def generate_voice(job: RenderJob, workspace: str) -> VoiceStem:
    """The voice stem: TTS chunks as cached, retried tasks (tasks/voice.py), or the uploaded recording.

    No retries here: each chunk task retries its own transient failures, and a failed provider hands the
    track to the TTS_FALLBACK providers; an upload is downloaded once.
    """
    settings = get_settings()
    choice = voice_mod.choose_voice(job, settings, set(build_tts_factories(settings)) | {"upload"})
    if choice.provider == "upload":
        return voice_mod.prepare_upload(
            voice_mod.recording_source(choice), Path(workspace), settings, sample_rate=job.output.sample_rate,
            storage=cast(StorageReader, build_storage(with_s3_block(settings))),  # every backend reads too
        )
    return voice_track(job, settings, Path(workspace), choice,
                       on_progress=reporter(job.id, Stage.GENERATING_VOICE))


@task(name="fetch-background", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient,
      cache_policy=NO_CACHE)
def fetch_background(job: RenderJob, workspace: str) -> BackgroundBed:
    settings = get_settings()
    return layer_mod.prepare_background(
        job, settings, Path(workspace), sample_rate=job.output.sample_rate,
        allow_local=settings.allow_local_assets, base_dir=settings.asset_base_dir,
    )


@task(name="plan-tone", cache_policy=NO_CACHE, task_run_name="plan-{kind}")
def plan_tone(kind: ToneKind, job: RenderJob) -> TonePlan:
    return layer_mod.plan_tone(kind, job, get_settings(), sample_rate=job.output.sample_rate)


@task(name="master-audio", cache_policy=NO_CACHE)
def master_audio(job: RenderJob, workspace: str, voice: VoiceStem | None, bed: BackgroundBed | None,
                 tones: list[TonePlan]) -> master_mod.MasterOutcome:
    plan = master_mod.plan_master(job, get_settings(), voice=voice, bed=bed, tone_plans=tuple(tones),
                                  sample_rate=job.output.sample_rate)
    out = Path(workspace) / f"master.{job.output.format}"
    return master_mod.master(plan, out, on_mix=reporter(job.id, Stage.MIXING_AUDIO),
                             on_verify=reporter(job.id, Stage.NORMALIZING))


@task(name="store-output", cache_policy=NO_CACHE)
def store_output(job: RenderJob, path: str) -> StoredObject:
    """Upload the delivered file under its immutable key.

    No task-level retries on purpose: the storage adapter retries transient failures itself (STORAGE_RETRIES,
    resuming where its protocol allows), so retrying here too would multiply the attempts.
    """
    settings = with_s3_block(get_settings())
    storage = build_services(settings).storage
    digest = _sha256(Path(path))
    key = render_key(job.id, digest, job.output.format)
    report = reporter(job.id, Stage.UPLOADING)
    return storage.put(Path(path), key, content_type=CONTENT_TYPES[job.output.format],
                       public=job.output.storage_location == "public", sha256=digest,
                       on_progress=lambda f: report(f, f"Uploading to {storage.name} storage: {f:.0%}"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
