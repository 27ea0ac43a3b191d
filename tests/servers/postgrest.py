"""A loopback PostgREST stand-in for ``/rest/v1/rpc/<function>``, backed by the real test database.

It implements the RPC endpoint as PostgREST does: JSON object of named arguments in, a JSON array for
set-returning functions (a scalar otherwise) out, ``select`` (columns, ``alias:``, ``::type`` casts) applied to a
set-returning function's rows; the role comes from the API key (service key: service_role, anon key: anon) and
the call runs under it in Postgres, so grants are really checked; errors are ``{"code", "message", "details",
"hint"}`` with PostgREST's status codes.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

SERVICE_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2VydmljZS1zaWduYXR1cmU"
ANON_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.YW5vbi1zaWduYXR1cmU"
_FN = re.compile(r"^/rest/v1/rpc/(?P<fn>[a-z_][a-z0-9_]*)$")
# one item of PostgREST's ``select``: [alias:]column[::type]
_NAME = r"[a-z_][a-z0-9_]*"
_SELECT_ITEM = re.compile(rf"^(?:(?P<alias>{_NAME}):)?(?P<col>{_NAME})(?:::(?P<cast>{_NAME}))?$")


def _select_list(select: str | None) -> sql.Composable | None:
    """PostgREST's ``select`` (columns, aliases and casts; ``*`` for all) as SQL; None for all columns."""
    if not select or select == "*":
        return None
    items = []
    for item in select.split(","):
        m = _SELECT_ITEM.match(item.strip())
        if m is None:
            raise ValueError(f"unsupported select item {item!r}")
        col = sql.Identifier(m["col"])
        expr = sql.SQL("{}::{}").format(col, sql.SQL(m["cast"])) if m["cast"] else col
        items.append(sql.SQL("{} AS {}").format(expr, sql.Identifier(m["alias"] or m["col"])))
    return sql.SQL(", ").join(items)


class PostgrestRpcServer:
    """A loopback PostgREST stand-in for /rest/v1/rpc/*, backed by a real database."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                status, body = server.handle(self.path, dict(self.headers.items()),
                                             self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PostgrestRpcServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _error(status: int, code: str, message: str, details: str | None = None) -> tuple[int, Any]:
        return status, {"code": code, "message": message, "details": details, "hint": None}

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        headers = {k.lower(): v for k, v in headers.items()}
        url = urlsplit(path)
        match = _FN.match(url.path)
        if not match:
            return self._error(404, "PGRST125", f"Invalid path specified in request URL: {path}")
        key = headers.get("apikey", "")
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        if key not in (SERVICE_KEY, ANON_KEY) or bearer not in (SERVICE_KEY, ANON_KEY):
            return self._error(401, "PGRST301", "JWSError JWSInvalidSignature")
        role = "service_role" if bearer == SERVICE_KEY else "anon"
        args = json.loads(raw or b"{}")
        fn = match["fn"]
        self.calls.append((fn, args, headers))
        with psycopg.connect(self.dsn) as conn:
            found = conn.execute("SELECT p.proretset FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                                 "WHERE n.nspname = 'public' AND p.proname = %s", (fn,)).fetchone()
            if found is None:
                return self._error(404, "PGRST202", f"Could not find the function public.{fn} in the schema cache")
            named = sql.SQL(", ").join(
                sql.SQL("{} => {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in args)
            call = sql.SQL("public.{}({})").format(sql.Identifier(fn), named)
            try:
                columns = _select_list(parse_qs(url.query).get("select", [None])[-1])
            except ValueError as exc:
                return self._error(400, "PGRST100", f"failed to parse select parameter: {exc}")
            source = call if columns is None else sql.SQL("(SELECT {} FROM {} r)").format(columns, call)
            query = (sql.SQL("SELECT coalesce(json_agg(t), '[]'::json) FROM {} t").format(source) if found[0]
                     else sql.SQL("SELECT to_json({})").format(call))
            params = {k: Jsonb(v) if isinstance(v, dict | list) else v for k, v in args.items()}
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                    conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps({"role": role}),))
                    value = conn.execute(query, params).fetchone()[0]  # type: ignore[index]
            except psycopg.errors.InsufficientPrivilege as exc:
                return self._error(401 if role == "anon" else 403, "42501", str(exc).splitlines()[0])
            except psycopg.Error as exc:
                return self._error(400, exc.sqlstate or "XX000", str(exc).splitlines()[0])
        return 200, value
