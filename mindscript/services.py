"""The one place that chooses real or local implementations for an environment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mindscript.errors import PermanentError
from mindscript.queue.base import JobQueue
from mindscript.settings import Settings
from mindscript.storage.base import Storage
from mindscript.tts.base import TTSProvider


def _local_tts(settings: Settings) -> TTSProvider:
    from mindscript.tts.espeak import EspeakProvider

    return EspeakProvider(words_per_minute=settings.local_voice_wpm)


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


def build_services(settings: Settings) -> Services:
    if settings.storage_backend == "local":
        from mindscript.storage.local import LocalStorage

        storage: Storage = LocalStorage(settings.storage_dir)
    else:
        raise PermanentError(f"STORAGE_BACKEND={settings.storage_backend!r} is not available in this build")
    return Services(storage=storage, tts_factories={"local": lambda: _local_tts(settings)})


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
