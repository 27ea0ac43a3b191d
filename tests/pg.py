"""Postgres for the test suite (a pytest plugin loaded by tests/conftest.py).

The server: DATABASE_URL when set (CI exports postgresql://postgres@127.0.0.1:5432/test), otherwise an
embedded one (pgserver) under ./.mindscript/test-pg, so a fresh machine needs no set-up. One template
database per session gets supabase/tests/bootstrap.sql and the migrations; every test gets its own clone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _admin(dsn: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def _with_db(dsn: str, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, dbname=dbname)


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """A superuser DSN on a running server (DATABASE_URL or the embedded one)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    import pgserver

    data = ROOT / ".mindscript" / "test-pg"
    data.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data), cleanup_mode="stop")
    yield server.get_uri()


@pytest.fixture(scope="session")
def pg_template(pg_server_dsn: str) -> Iterator[str]:
    """Name of this session's migrated template database."""
    from mindscript.queue.migrate import apply_migrations

    name = f"mindscript_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _admin(pg_server_dsn, f'CREATE DATABASE "{name}"')
    try:
        apply_migrations(_with_db(pg_server_dsn, name))
        yield name
    finally:
        _admin(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(pg_server_dsn: str, pg_template: str) -> Iterator[str]:
    """A fresh clone of the template for one test; dropped afterwards."""
    name = f"mindscript_t_{uuid.uuid4().hex[:12]}"
    _admin(pg_server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield _with_db(pg_server_dsn, name)
    finally:
        _admin(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_queue(pg_dsn: str) -> Iterator[object]:
    from mindscript.queue.postgres import PostgresQueue

    queue = PostgresQueue(pg_dsn, max_size=8)
    try:
        yield queue
    finally:
        queue.close()
