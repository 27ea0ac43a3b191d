"""Shared fixtures: every test gets its own work and output directories and fresh settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mindscript.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.pg"]  # Postgres fixtures (pg_dsn, pg_queue): DATABASE_URL or an embedded server


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[str]:
    """One Prefect test server for the whole session (starting one costs ~10 s); its API URL. tests/flows use
    it for every test; elsewhere a test asks for it by name."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        from prefect.settings import PREFECT_API_URL

        yield str(PREFECT_API_URL.value())


@pytest.fixture
def worker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Settings pointed at a private work dir and local storage dir (cache cleared before and after)."""
    monkeypatch.setenv("WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("STORAGE_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("ALLOW_LOCAL_ASSETS", "true")
    monkeypatch.setenv("ASSET_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("TTS_CACHE_DIR", str(tmp_path / "tts-cache"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
