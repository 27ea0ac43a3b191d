"""An embedded Postgres (the pgserver package) so a fresh machine runs the worker with no set-up.

Used only when neither SUPABASE_DB_URL / DATABASE_URL nor SUPABASE_URL + SUPABASE_SERVICE_KEY is set. The
data lives under EMBEDDED_PG_DIR (./.mindscript/pg); the server stops when the last process using it exits.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import Any

from mindscript.errors import QueueUnavailable

log = logging.getLogger(__name__)
_servers: dict[Path, Any] = {}  # keep the handles alive for the life of the process
_lock = threading.Lock()


def embedded_dsn(data_dir: Path) -> str:
    """Start (or attach to) the embedded server under ``data_dir``, migrate it, return its libpq URL."""
    from mindscript.queue.migrate import apply_migrations

    data_dir = data_dir.expanduser().resolve()
    with _lock:
        server = _servers.get(data_dir)
        if server is None:
            try:
                with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
                    warnings.simplefilter("ignore")
                    import pgserver
            except ImportError as exc:  # pragma: no cover - it is a dependency
                raise QueueUnavailable("no queue configured and the pgserver package is not installed") from exc
            data_dir.mkdir(parents=True, exist_ok=True)
            try:
                server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
            except Exception as exc:  # pgserver raises plain exceptions (initdb/pg_ctl failures)
                raise QueueUnavailable(f"embedded Postgres under {str(data_dir)!r} did not start: {exc}") from exc
            _servers[data_dir] = server
            log.info("embedded Postgres running under %s", data_dir)
        dsn = server.get_uri()
    apply_migrations(dsn)
    return dsn
