"""The worker's configuration: one pydantic-settings model, built lazily by ``get_settings()``.

Nothing reads the environment at import time. Environment variable names are the seed's (units kept:
POLL_INTERVAL and IDLE_TIMEOUT are milliseconds); every variable is documented in README.md.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # identity and capacity
    worker_id: str = Field(default="worker-local", description="Name of this worker in logs and queue rows.")
    max_jobs: int = Field(default=2, ge=1, le=64)
    poll_interval: int = Field(default=5000, ge=100, description="Queue poll interval, ms.")
    idle_timeout: int = Field(default=0, ge=0, description="Stop after this long idle, ms (0 = never).")
    health_port: int = Field(default=8080, ge=0, le=65535)

    # rendering
    target_lufs: float = Field(default=-16.0, ge=-40.0, le=-5.0)
    true_peak_ceiling_dbtp: float = Field(default=-1.0, ge=-9.0, le=0.0)
    max_duration_minutes: float = Field(default=60.0, gt=0, le=240)
    sample_rate: Literal[44100, 48000] = 44100
    tts_chunk_size: int = Field(default=4000, ge=100, le=40000)
    block_frames: int = Field(default=65536, ge=1024, le=1 << 20, description="Master stage block size.")

    # layer levels relative to the voice (LU), used when a job does not give gainDb
    background_rel_lu: float = -14.0
    solfeggio_rel_lu: float = -24.0
    binaural_rel_lu: float = -20.0
    duck_depth_db: float = Field(default=6.0, ge=0.0, le=40.0)

    # voice placement
    voice_lead_in_s: float = Field(default=8.0, ge=0.0, le=120.0)
    voice_tail_s: float = Field(default=15.0, ge=0.0, le=300.0)
    paragraph_pause_s: float = Field(default=2.0, ge=0.0, le=60.0)
    local_voice: str = "en-us"
    local_voice_wpm: int = Field(default=140, ge=80, le=450)

    # fades (seconds)
    tone_fade_s: float = Field(default=10.0, ge=0.0, le=120.0)
    background_fade_in_s: float = Field(default=5.0, ge=0.0, le=120.0)
    program_fade_out_s: float = Field(default=10.0, ge=0.0, le=120.0)
    loop_crossfade_s: float = Field(default=3.0, ge=0.05, le=30.0)

    # assets
    max_asset_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    download_timeout_s: float = Field(default=60.0, gt=0)
    allow_local_assets: bool = Field(
        default=False, description="Accept local file paths as track/recording sources (CLI renders only)."
    )
    asset_base_dir: Path | None = Field(default=None, description="Base for relative asset paths.")

    # storage and workspace
    storage_backend: Literal["local", "supabase", "s3"] = "local"
    storage_dir: Path = Path("./output")
    work_dir: Path = Path("./.mindscript/work")

    # credentials (SecretStr: never printed by repr or logs)
    supabase_url: str | None = None
    supabase_service_key: SecretStr | None = None
    openai_api_key: SecretStr | None = None
    elevenlabs_api_key: SecretStr | None = None

    # ---- queue (issue 5: transports, leases, backoff, worker shutdown) ----
    supabase_db_url: SecretStr | None = Field(default=None, description="Postgres URL of the Supabase database.")
    database_url: SecretStr | None = Field(default=None, description="Postgres URL (used when no SUPABASE_DB_URL).")
    embedded_pg_dir: Path = Field(default=Path("./.mindscript/pg"),
                                  description="Embedded Postgres data dir when no queue is configured.")
    queue_lease_s: int = Field(default=60, ge=2, le=3600, description="Lease of a claimed job, s; renewed.")
    queue_backoff_base_s: float = Field(default=10.0, ge=0.0, le=3600.0, description="First retry delay; doubles.")
    queue_backoff_max_s: float = Field(default=600.0, ge=0.0, le=86400.0, description="Longest retry delay.")
    queue_progress_interval_s: float = Field(default=1.0, ge=0.0, le=60.0, description="Min gap of row writes.")
    shutdown_grace: int = Field(default=120000, ge=0, description="On SIGTERM, wait this long for renders, ms.")

    @property
    def queue_dsn(self) -> str | None:
        """SUPABASE_DB_URL, else DATABASE_URL, else None."""
        secret = self.supabase_db_url or self.database_url
        return secret.get_secret_value() if secret is not None else None
    # ---- end queue ----

    @field_validator("storage_dir", "work_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
