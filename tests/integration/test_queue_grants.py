"""Queue security on real Postgres: the service functions cannot be used by an app user (anon/authenticated).

PostgREST exposes every function in the public schema as ``/rest/v1/rpc/<name>`` to whoever holds the anon
key or a user's JWT; what stops them is EXECUTE. These tests read the grants from the catalog, call every
function as each API role the way PostgREST does (``SET LOCAL ROLE`` plus ``request.jwt.claims``), and check
each is SECURITY INVOKER with a fixed search_path (supabase/migrations/*_audio_job_functions_hardening.sql).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from mindscript.queue.postgres import PostgresQueue
from mindscript.queue.sql import QUERIES

PAYLOAD = {"type": "render", "projectData": {"scriptText": "Rest.", "durationMin": 0.5}}
APP_ROLES = ("anon", "authenticated")


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(pg_dsn, row_factory=dict_row) as c:
        yield c


def _functions(conn: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
    return conn.execute("""
        SELECT p.oid, p.proname AS name, p.oid::regprocedure::text AS signature, p.prosecdef AS definer,
               p.proconfig AS config, p.proacl IS NULL AS default_acl, p.prorettype = 'trigger'::regtype AS trigger,
               pg_get_function_identity_arguments(p.oid) AS args,
               array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) AS t) AS arg_types,
               EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                        WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS public_execute
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND p.proname LIKE 'audio\\_job\\_%'
         ORDER BY p.proname""").fetchall()


def _as(conn: psycopg.Connection[Any], role: str, user: uuid.UUID | None = None) -> None:
    """What PostgREST does for a request: the JWT claims as a setting, then the role."""
    claims = {"role": role, **({"sub": str(user)} if user else {})}
    conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
    conn.execute(f"SET LOCAL ROLE {role}")


def _call(fn: dict[str, Any]) -> str:
    nulls = ", ".join(f"NULL::{t}" for t in fn["arg_types"])
    return f"SELECT * FROM public.{fn['name']}({nulls})"


def test_every_function_the_worker_calls_is_covered(conn: psycopg.Connection[dict[str, Any]]) -> None:
    names = {f["name"] for f in _functions(conn)}
    called = {f"audio_job_{q}" for q in QUERIES if q != "ping"}
    assert called <= names, called - names
    assert {"audio_job_claim", "audio_job_complete", "audio_job_fail", "audio_job_requeue_expired",
            "audio_job_stats", "audio_job_extend_lease", "audio_job_release"} <= names


def test_execute_is_granted_to_the_service_role_only(conn: psycopg.Connection[dict[str, Any]]) -> None:
    functions = _functions(conn)
    assert len(functions) >= 14
    for fn in functions:
        assert not fn["default_acl"] and not fn["public_execute"], f"{fn['signature']}: PUBLIC may execute it"
        for role in APP_ROLES:
            allowed = conn.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE') AS ok",
                                   (role, fn["oid"])).fetchone()
            assert allowed == {"ok": False}, f"{role} may execute {fn['signature']}"
        allowed = conn.execute("SELECT has_function_privilege('service_role', %s, 'EXECUTE') AS ok",
                               (fn["oid"],)).fetchone()
        assert allowed == {"ok": True}, fn["signature"]


def test_functions_are_security_invoker_with_a_fixed_empty_search_path(
        conn: psycopg.Connection[dict[str, Any]]) -> None:
    for fn in _functions(conn):
        # DEFINER would run as the owner (a superuser here) and bypass RLS for any role allowed to call it
        assert fn["definer"] is False, f"{fn['signature']} is SECURITY DEFINER"
        assert fn["config"] is not None and 'search_path=""' in fn["config"], (fn["signature"], fn["config"])


@pytest.mark.parametrize("role", APP_ROLES)
def test_an_app_user_gets_permission_denied_for_every_function(
        conn: psycopg.Connection[dict[str, Any]], pg_queue: PostgresQueue, role: str) -> None:
    user = uuid.uuid4()
    mine = pg_queue.enqueue(PAYLOAD, user_id=user)
    checked = 0
    for fn in _functions(conn):
        if fn["trigger"]:
            continue
        with conn.transaction(force_rollback=True):
            _as(conn, role, user if role == "authenticated" else None)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
                conn.execute(_call(fn))
        checked += 1
    # with real arguments too: the user's own row, which they can read but must not claim or finish
    for call, args in (("audio_job_claim(%s, 10, 60)", ("app",)),
                       ("audio_job_complete(%s, 1, %s)", (mine.id, Jsonb({"success": True}))),
                       ("audio_job_fail(%s, 1, 'x', true)", (mine.id,)),
                       ("audio_job_enqueue(%s, 100)", (Jsonb(PAYLOAD),))):
        with conn.transaction(force_rollback=True):
            _as(conn, role, user if role == "authenticated" else None)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM public.{call}", args)
    assert checked >= 14
    row = pg_queue.get(mine.id)
    assert row is not None and row.status == "pending" and row.attempts == 0 and row.priority == 0


def test_the_service_role_may_call_every_function(conn: psycopg.Connection[dict[str, Any]]) -> None:
    for fn in _functions(conn):
        if fn["trigger"]:
            continue
        with conn.transaction(force_rollback=True):
            _as(conn, "service_role")
            try:
                conn.execute(_call(fn))
            except psycopg.errors.InsufficientPrivilege as exc:  # pragma: no cover - the assertion
                pytest.fail(f"service_role cannot run {fn['signature']}: {exc}")
            except psycopg.Error:
                pass  # NULL arguments may violate a constraint: the privilege check came first and passed


def test_a_callers_search_path_cannot_swap_what_the_functions_use(
        conn: psycopg.Connection[dict[str, Any]], pg_queue: PostgresQueue) -> None:
    # A schema ahead of pg_catalog in the caller's search_path with its own now(): a function that resolves
    # names at call time with the caller's path would lease rows as of the year 2000.
    pg_queue.enqueue(PAYLOAD)
    with conn.transaction(force_rollback=True):
        conn.execute("CREATE SCHEMA evil")
        conn.execute("CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql "
                     "AS $$ SELECT timestamptz '2000-01-01 00:00:00+00' $$")
        conn.execute("GRANT USAGE ON SCHEMA evil TO service_role")
        conn.execute("GRANT EXECUTE ON FUNCTION evil.now() TO service_role")
        _as(conn, "service_role")
        conn.execute("SET LOCAL search_path = evil, pg_catalog, public")
        assert conn.execute("SELECT now() AS t").fetchone()["t"].year == 2000  # type: ignore[index]
        [row] = conn.execute("SELECT locked_until, started_at FROM public.audio_job_claim('w', 1, 60)").fetchall()
        assert row["started_at"].year >= 2025 and row["locked_until"].year >= 2025


def test_app_users_cannot_delete_truncate_or_touch_other_columns(
        conn: psycopg.Connection[dict[str, Any]], pg_queue: PostgresQueue) -> None:
    user = uuid.uuid4()
    mine = pg_queue.enqueue(PAYLOAD, user_id=user)
    for statement, args in (("DELETE FROM audio_job_queue WHERE id = %s", (mine.id,)),
                            ("TRUNCATE audio_job_queue", ()),
                            ("UPDATE audio_job_queue SET priority = 100 WHERE id = %s", (mine.id,)),
                            ("INSERT INTO audio_job_queue (payload, attempts) VALUES (%s, 0)", (Jsonb(PAYLOAD),)),
                            ("INSERT INTO audio_job_queue (payload, max_attempts) VALUES (%s, 1000)",
                             (Jsonb(PAYLOAD),)),
                            ("INSERT INTO audio_job_queue (payload, available_at) VALUES (%s, now())",
                             (Jsonb(PAYLOAD),))):
        for role in APP_ROLES:
            with conn.transaction(force_rollback=True):
                _as(conn, role, user if role == "authenticated" else None)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement, args)
    assert pg_queue.get(mine.id) is not None
