"""The worker's configuration: one pydantic-settings model, built lazily by ``get_settings()``.

Nothing reads the environment at import time. Environment variable names are the seed's (units kept:
POLL_INTERVAL and IDLE_TIMEOUT are milliseconds); every variable is documented in README.md.
"""

from __future__ import annotations

import ipaddress
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
    warm_processes: bool = Field(
        default=True, description="serve.py starts renders in pre-imported interpreters (MAX_JOBS kept warm).")

    # rendering
    target_lufs: float = Field(default=-16.0, ge=-40.0, le=-5.0)
    true_peak_ceiling_dbtp: float = Field(default=-1.0, ge=-9.0, le=0.0)
    max_duration_minutes: float = Field(default=60.0, gt=0, le=240)
    sample_rate: Literal[44100, 48000] = 44100
    tts_chunk_size: int = Field(default=4000, ge=100, le=40000)
    block_frames: int = Field(default=65536, ge=1024, le=1 << 20, description="Master stage block size.")
    encode_segments: int = Field(
        default=0, ge=0, le=16,
        description="MP3 segments encoded in parallel and joined at frame boundaries (0: one per usable CPU, max 8).",
    )

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
    allow_http_assets: bool = Field(default=False, description="Accept plain http:// asset URLs (https only).")
    asset_host_allowlist: str = Field(
        default="", description="Comma-separated hosts downloads may use ('*.example.com': subdomains); '' = any.")
    asset_allow_private_networks: str = Field(
        default="", description="Comma-separated CIDRs exempt from the private-address refusal (tests, mirrors).")
    asset_ca_bundle: Path | None = Field(default=None, description="CA bundle for https downloads (PEM).")
    download_deadline_s: float = Field(default=600.0, gt=0, description="Whole download incl. redirects, s.")

    # storage and workspace
    storage_backend: Literal["local", "supabase", "s3"] = "local"
    storage_dir: Path = Path("./output")
    work_dir: Path = Path("./.mindscript/work")

    # credentials (SecretStr: never printed by repr or logs)
    supabase_url: str | None = None
    supabase_service_key: SecretStr | None = None
    openai_api_key: SecretStr | None = None
    elevenlabs_api_key: SecretStr | None = None

    # ---- TTS (voices: providers, cache, concurrency, retries, fallback, prices) ----
    openai_base_url: str | None = Field(default=None, description="OpenAI API base URL (proxy or test server).")
    openai_tts_model: str = "gpt-4o-mini-tts"
    openai_tts_instructions: str = Field(
        default=(
            "Speak as a calm meditation guide: slow, warm and soft, with a relaxed, even pace and gentle pauses "
            "between sentences. Never rushed, never dramatic."
        ),
        max_length=4000,
    )
    openai_tts_format: Literal["pcm", "wav"] = "pcm"
    openai_default_voice: str = Field(default="nova", description="Voice when OpenAI is used as a fallback.")
    elevenlabs_base_url: str | None = Field(default=None, description="ElevenLabs API base URL.")
    elevenlabs_model: str = "eleven_multilingual_v2"
    elevenlabs_output_format: str = Field(default="pcm_44100", pattern=r"^pcm_(8000|16000|22050|24000|44100|48000)$")
    elevenlabs_default_voice: str = Field(
        default="21m00Tcm4TlvDq8ikWAM", description="Voice id when ElevenLabs is used as a fallback."
    )
    elevenlabs_stability: float = Field(default=0.6, ge=0.0, le=1.0)
    elevenlabs_similarity: float = Field(default=0.75, ge=0.0, le=1.0)
    tts_fallback: str = Field(
        default="local", description="Comma-separated providers that re-voice a track whose primary failed."
    )
    tts_concurrency_openai: int = Field(default=8, ge=1, le=64)
    tts_concurrency_elevenlabs: int = Field(default=2, ge=1, le=64)
    tts_concurrency_local: int = Field(default=1, ge=1, le=64)
    tts_global_limits: bool = Field(
        default=True, description="Bound OpenAI/ElevenLabs requests across all workers with the Prefect global "
                                  "concurrency limits tts-<provider>, sized by TTS_CONCURRENCY_<PROVIDER>.")
    tts_retries: int = Field(default=3, ge=0, le=10)
    tts_retry_delay_s: float = Field(default=2.0, ge=0.0, le=120.0, description="First retry delay; doubles.")
    tts_timeout_s: float = Field(default=120.0, gt=0)
    tts_cache_dir: Path = Path("./.mindscript/tts-cache")
    tts_cache_s3_block: str | None = Field(default=None, description="prefect-aws S3Bucket block for the cache.")
    redis_url: SecretStr | None = Field(default=None, description="Redis for cross-worker TTS cache locks.")
    tts_prices: dict[str, float] = Field(
        default_factory=lambda: {
            "openai:tts-1": 15.0,
            "openai:tts-1-hd": 30.0,
            "openai:gpt-4o-mini-tts": 12.0,
            "elevenlabs": 150.0,
            "local": 0.0,
        },
        description="USD per 1M characters, by 'provider:model' or 'provider' (JSON in the environment).",
    )

    @property
    def tts_fallback_chain(self) -> tuple[str, ...]:
        """TTS_FALLBACK as an ordered tuple of provider names (empty: no fallback)."""
        names = [n.strip().lower() for n in self.tts_fallback.split(",")]
        return tuple(dict.fromkeys(n for n in names if n and n != "none"))

    def tts_concurrency(self, provider: str) -> int:
        """How many requests to ``provider`` run at once: across all workers (global limit) for the cloud
        vendors, per worker process for the local voice."""
        return int(getattr(self, f"tts_concurrency_{provider}", 4))

    def tts_price_per_million(self, provider: str, model: str | None) -> float:
        """The configured price per 1M characters for ``provider``/``model`` (0 when unknown)."""
        return float(self.tts_prices.get(f"{provider}:{model}", self.tts_prices.get(provider, 0.0)))
    # ---- end TTS ----

    # ---- storage (backends, buckets, URLs, retries; storage_backend/storage_dir are above) ----
    public_bucket: str = Field(default="renders-public", min_length=3, max_length=63,
                               description="Bucket for storageLocation=public (public URL).")
    private_bucket: str = Field(default="renders-private", min_length=3, max_length=63,
                                description="Bucket for storageLocation=private (signed URL).")
    signed_url_ttl: int = Field(default=3600, ge=60, le=7 * 24 * 3600, description="Signed URL lifetime, s.")
    upload_fallback_bucket: str | None = Field(default=None, description="Bucket used once when a bucket refuses.")
    storage_retries: int = Field(default=5, ge=0, le=10, description="Retries of a transient storage failure.")
    storage_retry_delay_s: float = Field(default=1.0, ge=0.0, le=60.0, description="First retry delay; doubles.")
    storage_timeout_s: float = Field(default=120.0, gt=0, description="Per-request storage timeout.")
    storage_create_buckets: bool = Field(default=True, description="Create a missing bucket on first use.")
    supabase_tus_threshold_mb: float = Field(default=6.0, gt=0, le=5000,
                                             description="Files above this go through TUS resumable upload.")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (R2, MinIO, ...).")
    s3_region: str = "us-east-1"
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    s3_block: str | None = Field(default=None, description="Saved prefect-aws S3Bucket block (read by tasks/).")
    s3_public_url_template: str | None = Field(
        default=None, description="Public URL of an object: '{endpoint}', '{bucket}', '{region}', '{key}' fields.")
    s3_multipart_chunk_mb: int = Field(default=8, ge=5, le=512, description="Multipart part size (5 MiB minimum).")
    s3_max_concurrency: int = Field(default=4, ge=1, le=32, description="Parts in flight at once.")
    recordings_bucket: str | None = Field(default=None, description="Bucket of upload:<key> voices (S3/Supabase); "
                                                                    "unset: PRIVATE_BUCKET.")
    recordings_prefix: str = Field(default="uploads/", max_length=512,
                                   description="upload:<key> voices must be keys under this prefix ('' = anywhere).")
    # ---- end storage ----

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

    @field_validator("recordings_prefix")
    @classmethod
    def _folder_prefix(cls, value: str) -> str:
        # A folder, so "uploads" cannot match "uploads-other/..."; no '.'/'..' segments, not absolute.
        value = value.strip()
        if value and not value.endswith("/"):
            value += "/"
        parts = value.split("/")[:-1]
        if value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"RECORDINGS_PREFIX must be a relative folder like 'uploads/', got {value!r}")
        return value

    @field_validator("asset_allow_private_networks")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        for item in (i.strip() for i in value.split(",")):
            if not item:
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"ASSET_ALLOW_PRIVATE_NETWORKS: {item!r} is not an IP network (CIDR)") from None
        return value

    @field_validator("storage_dir", "work_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
