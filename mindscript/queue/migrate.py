"""Apply supabase/migrations to a plain Postgres (tests, the embedded server), Supabase CLI bookkeeping kept.

On Supabase itself use ``supabase db push``; this is for databases that are not a Supabase project, so it
first runs supabase/tests/bootstrap.sql (roles, auth.uid(), publication). Applied versions are recorded in
``supabase_migrations.schema_migrations`` like the Supabase CLI does, so each migration runs once.
"""

from __future__ import annotations

from pathlib import Path

from mindscript.queue.postgres import wrap_exceptions

SUPABASE_DIR = Path(__file__).resolve().parents[2] / "supabase"
_LOCK_KEY = 0x6D696E64  # pg_advisory_lock key: one migrator at a time


def migration_files(supabase_dir: Path = SUPABASE_DIR) -> list[Path]:
    return sorted((supabase_dir / "migrations").glob("*.sql"))


def apply_migrations(dsn: str, *, bootstrap: bool = True, supabase_dir: Path = SUPABASE_DIR) -> list[str]:
    """Bring the database at ``dsn`` up to date; returns the versions applied now."""
    import psycopg

    applied_now: list[str] = []
    with wrap_exceptions(), psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SELECT pg_advisory_lock({_LOCK_KEY})")
        try:
            if bootstrap:
                conn.execute((supabase_dir / "tests" / "bootstrap.sql").read_text(encoding="utf-8"))
            conn.execute("CREATE SCHEMA IF NOT EXISTS supabase_migrations")
            conn.execute("CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations "
                         "(version text PRIMARY KEY, statements text[], name text)")
            done = {r[0] for r in conn.execute("SELECT version FROM supabase_migrations.schema_migrations")}
            for path in migration_files(supabase_dir):
                version, _, name = path.stem.partition("_")
                if version in done:
                    continue
                with conn.transaction():
                    sql = path.read_text(encoding="utf-8")
                    conn.execute(sql)
                    conn.execute("INSERT INTO supabase_migrations.schema_migrations (version, statements, name) "
                                 "VALUES (%s, ARRAY[%s], %s)", (version, sql, name))
                applied_now.append(version)
        finally:
            conn.execute(f"SELECT pg_advisory_unlock({_LOCK_KEY})")
    return applied_now
