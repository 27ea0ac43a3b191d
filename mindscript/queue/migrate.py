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


def main(argv: list[str] | None = None) -> int:
    """``python -m mindscript.queue.migrate [DSN]`` (default: SUPABASE_DB_URL or DATABASE_URL)."""
    import argparse

    from mindscript.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m mindscript.queue.migrate", description=__doc__)
    parser.add_argument("dsn", nargs="?", help="libpq URL (default: SUPABASE_DB_URL, then DATABASE_URL)")
    parser.add_argument("--no-bootstrap", action="store_true",
                        help="skip supabase/tests/bootstrap.sql (the database already has Supabase's roles)")
    args = parser.parse_args(argv)
    settings = get_settings()
    dsn = args.dsn or settings.supabase_db_url or settings.database_url
    if not dsn:
        parser.error("no database: pass a DSN or set SUPABASE_DB_URL / DATABASE_URL")
    dsn = dsn.get_secret_value() if hasattr(dsn, "get_secret_value") else dsn
    applied = apply_migrations(dsn, bootstrap=not args.no_bootstrap)
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none (up to date)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
