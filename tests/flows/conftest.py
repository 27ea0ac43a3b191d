"""Every flow test runs against the session's Prefect test server (tests/conftest.py: prefect_harness)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_server(prefect_harness: str) -> str:
    return prefect_harness
