"""moto's S3 in server mode on 127.0.0.1, with a fault injector in front: ``python -m tests.servers.storage_s3``.

Prints ``PORT <n>`` once listening (port 0 = a free one). Control routes (not S3):
  POST /_faults  {"method": "PUT", "path": "/bucket", "query": "partNumber", "status": 503, "code": "SlowDown",
                  "count": 2}  arm a fault (every matcher optional)
  POST /_faults  {"reset": true}  disarm every fault
  GET  /_faults  -> {"injected": n, "by_status": {"503": n, ...}, "requests": [[method, path, query], ...]}
A fault answers matching requests with ``status`` and an S3 XML error body, ``count`` times, then passes.
With ``"rate": 0.2`` (and optionally ``"seed"``) only that fraction of matching requests is answered with the
fault (random, repeatable with the seed); ``count`` still bounds the total.
"""

from __future__ import annotations

import json
import random
import sys
import threading
from collections import Counter
from typing import Any

_lock = threading.Lock()
_faults: list[dict[str, Any]] = []
_log: list[list[str]] = []
_injected = 0
_by_status: Counter[str] = Counter()


def fault_middleware(app: Any) -> Any:
    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        global _injected
        method, path, query = environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        if path == "/_faults":
            if method == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                spec = json.loads(environ["wsgi.input"].read(length) or b"{}")
                with _lock:
                    if spec.get("reset"):
                        _faults.clear()
                    else:
                        spec["_random"] = random.Random(spec.get("seed"))
                        _faults.append(spec)
                body = b"{}"
            else:
                with _lock:
                    body = json.dumps({"injected": _injected, "by_status": dict(_by_status),
                                       "requests": _log}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        with _lock:
            _log.append([method, path, query])
            for spec in _faults:
                if (spec["count"] > 0 and spec.get("method", method) == method and spec.get("query", "") in query
                        and path.startswith(spec.get("path", ""))
                        and ("rate" not in spec or spec["_random"].random() < float(spec["rate"]))):
                    spec["count"] -= 1
                    _injected += 1
                    status, code = int(spec.get("status", 503)), spec.get("code", "ServiceUnavailable")
                    _by_status[str(status)] += 1
                    break
            else:
                status, code = 0, ""
        if status:
            # Drain the request body first, as a real front end would, so the client sees the answer.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            while length > 0:
                length -= len(environ["wsgi.input"].read(min(length, 1 << 16)) or b"x" * length)
            body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                    f"<Message>injected {status}</Message></Error>").encode()
            start_response(f"{status} Injected", [("Content-Type", "application/xml"),
                                                  ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return wrapped


def main(port: int = 0) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    class S3Only(DomainDispatcherApplication):
        """Every request is S3 (moto would guess other services for unsigned GETs on some paths)."""

        def infer_service_region_host(self, environ: dict[str, Any], path: str) -> str:
            return "s3.us-east-1.amazonaws.com"

    app = fault_middleware(S3Only(create_backend_app))
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
