"""The one place that chooses real or local implementations for an environment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mindscript.errors import PermanentError
from mindscript.queue.base import JobQueue
from mindscript.settings import Settings
from mindscript.storage.base import Storage
from mindscript.tts.base import TTSProvider


# ---- tts ----
def _local_tts(settings: Settings) -> TTSProvider:
    from mindscript.tts.espeak import EspeakProvider

    return EspeakProvider(words_per_minute=settings.local_voice_wpm)


def _openai_tts(settings: Settings) -> TTSProvider:
    from mindscript.tts.openai import OpenAIProvider

    assert settings.openai_api_key is not None
    return OpenAIProvider(api_key=settings.openai_api_key.get_secret_value(), base_url=settings.openai_base_url,
                          model=settings.openai_tts_model, instructions=settings.openai_tts_instructions,
                          response_format=settings.openai_tts_format, timeout_s=settings.tts_timeout_s)


def _elevenlabs_tts(settings: Settings) -> TTSProvider:
    from mindscript.tts.elevenlabs import ElevenLabsProvider

    assert settings.elevenlabs_api_key is not None
    return ElevenLabsProvider(api_key=settings.elevenlabs_api_key.get_secret_value(),
                              base_url=settings.elevenlabs_base_url, model=settings.elevenlabs_model,
                              output_format=settings.elevenlabs_output_format,
                              stability=settings.elevenlabs_stability, similarity=settings.elevenlabs_similarity,
                              timeout_s=settings.tts_timeout_s)


def build_tts_factories(settings: Settings) -> dict[str, Callable[[], TTSProvider]]:
    """The TTS providers this worker can use: local always; a cloud vendor when its API key is set."""
    factories: dict[str, Callable[[], TTSProvider]] = {"local": lambda: _local_tts(settings)}
    if settings.openai_api_key is not None and settings.openai_api_key.get_secret_value():
        factories["openai"] = lambda: _openai_tts(settings)
    if settings.elevenlabs_api_key is not None and settings.elevenlabs_api_key.get_secret_value():
        factories["elevenlabs"] = lambda: _elevenlabs_tts(settings)
    return factories


def default_voice(settings: Settings, provider: str) -> str:
    """The voice a provider reads with when it re-voices a track as a fallback."""
    return {"local": settings.local_voice, "openai": settings.openai_default_voice,
            "elevenlabs": settings.elevenlabs_default_voice}.get(provider, "")
# ---- end tts ----


@dataclass
class Services:
    storage: Storage
    tts_factories: dict[str, Callable[[], TTSProvider]] = field(default_factory=dict)

    def tts(self, name: str) -> TTSProvider:
        try:
            return self.tts_factories[name]()
        except KeyError:
            raise PermanentError(f"TTS provider {name!r} is not configured on this worker") from None

    @property
    def tts_names(self) -> set[str]:
        return set(self.tts_factories)


# ---- storage ----
def build_storage(settings: Settings) -> Storage:
    """The storage backend named by STORAGE_BACKEND, configured from settings (SDKs imported lazily)."""
    from mindscript.storage.base import RetryPolicy

    retry = RetryPolicy(retries=settings.storage_retries, base_delay_s=settings.storage_retry_delay_s)
    if settings.storage_backend == "local":
        from mindscript.storage.local import LocalStorage

        return LocalStorage(settings.storage_dir)
    if settings.storage_backend == "s3":
        from mindscript.storage.s3 import S3Config, S3Storage

        return S3Storage(S3Config(
            public_bucket=settings.public_bucket, private_bucket=settings.private_bucket,
            endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
            access_key_id=settings.aws_access_key_id, secret_access_key=settings.aws_secret_access_key,
            session_token=settings.aws_session_token,
            signed_url_ttl=settings.signed_url_ttl, public_url_template=settings.s3_public_url_template,
            fallback_bucket=settings.upload_fallback_bucket, chunk_bytes=settings.s3_multipart_chunk_mb << 20,
            max_concurrency=settings.s3_max_concurrency, timeout_s=settings.storage_timeout_s,
            create_buckets=settings.storage_create_buckets), retry)
    if settings.storage_backend == "supabase":
        from mindscript.storage.supabase import SupabaseConfig, SupabaseStorage

        if not settings.supabase_url or settings.supabase_service_key is None:
            raise PermanentError("STORAGE_BACKEND='supabase' needs SUPABASE_URL and SUPABASE_SERVICE_KEY")
        return SupabaseStorage(SupabaseConfig(
            url=settings.supabase_url, service_key=settings.supabase_service_key,
            public_bucket=settings.public_bucket, private_bucket=settings.private_bucket,
            signed_url_ttl=settings.signed_url_ttl, fallback_bucket=settings.upload_fallback_bucket,
            timeout_s=settings.storage_timeout_s, create_buckets=settings.storage_create_buckets,
            tus_threshold_bytes=int(settings.supabase_tus_threshold_mb * (1 << 20))), retry)
    raise PermanentError(f"STORAGE_BACKEND={settings.storage_backend!r} is not available in this build")
# ---- end storage ----


# ---- queue ----
def build_queue(settings: Settings) -> JobQueue:
    """SUPABASE_DB_URL / DATABASE_URL: Postgres; else SUPABASE_URL + SUPABASE_SERVICE_KEY: REST rpc; else an
    embedded Postgres under EMBEDDED_PG_DIR (started on first use)."""
    dsn = settings.queue_dsn
    if dsn:
        from mindscript.queue.postgres import PostgresQueue

        return PostgresQueue(dsn, max_size=max(4, settings.max_jobs + 2))
    if settings.supabase_url and settings.supabase_service_key is not None:
        from mindscript.queue.supabase import SupabaseQueue

        return SupabaseQueue(settings.supabase_url, settings.supabase_service_key.get_secret_value())
    from mindscript.queue.embedded import embedded_dsn
    from mindscript.queue.postgres import PostgresQueue

    return PostgresQueue(embedded_dsn(settings.embedded_pg_dir), max_size=max(4, settings.max_jobs + 2))
# ---- end queue ----


def build_services(settings: Settings) -> Services:
    storage = build_storage(settings)
    return Services(storage=storage, tts_factories=build_tts_factories(settings))
