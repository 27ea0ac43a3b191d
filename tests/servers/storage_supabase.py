"""A Supabase Storage API server on 127.0.0.1 speaking the routes storage3 and TUS clients use.

Routes (under /storage/v1): GET/POST bucket, POST object/{bucket}/{path} (multipart, x-upsert),
GET object/{bucket}/{path} (authenticated read), POST object/list/{bucket}, POST object/sign/{bucket}/{path},
GET object/sign/... (token), GET object/public/..., and TUS 1.0.0 at upload/resumable (POST create, HEAD
offset, PATCH chunk).
Errors use storage-api's body shape ``{"statusCode": "404", "error": ..., "message": ...}``; like the real
service, a missing bucket answers HTTP 400 with "404" in the body. Objects and TUS chunks are written to
disk in small pieces, so the server holds no file in memory. Faults are scripted with ``fail``.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import secrets
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.servers._http import LoopbackServer

PIECE = 64 * 1024


@dataclass
class Req:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)  # multipart: field -> value / {filename, content_type, size}
    body_size: int = 0


@dataclass
class Fault:
    method: str
    path_prefix: str
    status: int
    body: dict[str, Any]
    count: int


class SupabaseStorageServer(LoopbackServer):
    METHODS = ("GET", "POST", "PATCH", "HEAD", "PUT", "DELETE")

    def __init__(self, root: Path, service_key: str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.service_key = service_key
        self.buckets: dict[str, dict[str, Any]] = {}
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, tuple[str, str]] = {}
        self.requests: list[Req] = []
        self.faults: list[Fault] = []
        self.injected = 0
        self._lock = threading.Lock()
        self._start_http()

    @property
    def url(self) -> str:
        return self.origin

    def fail(self, method: str, path_prefix: str, status: int, count: int, error: str = "injected",
             message: str | None = None) -> None:
        body = {"statusCode": str(status), "error": error, "message": message or f"injected {status}"}
        with self._lock:
            self.faults.append(Fault(method, path_prefix, status, body, count))

    def calls(self, method: str, prefix: str) -> list[Req]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    # -- plumbing ----------------------------------------------------------------------------------------
    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(parsed.path)
        req = Req(h.command, path, dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)),
                  {k.lower(): v for k, v in h.headers.items()})
        with self._lock:
            self.requests.append(req)
            fault = next((f for f in self.faults if f.count > 0 and f.method == h.command
                          and path.startswith(f.path_prefix)), None)
            if fault:
                fault.count -= 1
                self.injected += 1
        if fault:
            self._drain(h)
            return self._send(h, fault.status, fault.body)
        if not path.startswith("/storage/v1/"):
            return self._send(h, 404, {"statusCode": "404", "error": "not_found", "message": "no route"})
        route = path[len("/storage/v1/"):]
        public_read = h.command == "GET" and route.startswith(("object/public/", "object/sign/"))
        if not public_read and (req.headers.get("authorization") != f"Bearer {self.service_key}"
                                or req.headers.get("apikey") != self.service_key):
            self._drain(h)
            return self._send(h, 400, {"statusCode": "403", "error": "Unauthorized", "message": "invalid signature"})
        try:
            self._route(h, req, route)
        except BrokenPipeError:
            pass

    def _drain(self, h: BaseHTTPRequestHandler) -> None:
        left = int(h.headers.get("Content-Length") or 0)
        while left > 0:
            got = h.rfile.read(min(PIECE, left))
            if not got:
                break
            left -= len(got)

    def _read(self, h: BaseHTTPRequestHandler) -> bytes:
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: Any = None, headers: dict[str, str] | None = None,
              raw: bytes | None = None, content_type: str = "application/json") -> None:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _not_found(self, h: BaseHTTPRequestHandler, what: str) -> None:
        # storage-api answers a missing bucket/object with HTTP 400 and the real status in the body
        self._send(h, 400, {"statusCode": "404", "error": "not_found", "message": f"{what} not found"})

    def _file(self) -> Path:
        return self.root / secrets.token_hex(8)

    # -- routes --------------------------------------------------------------------------------------------
    def _route(self, h: BaseHTTPRequestHandler, req: Req, route: str) -> None:
        m = h.command
        if route == "bucket" and m == "POST":
            req.json = json.loads(self._read(h))
            bid = req.json["id"]
            if bid in self.buckets:
                return self._send(h, 400, {"statusCode": "409", "error": "Duplicate", "message": "exists"})
            self.buckets[bid] = {"public": bool(req.json.get("public")),
                                 "file_size_limit": req.json.get("file_size_limit")}
            return self._send(h, 200, {"name": bid})
        if route.startswith("bucket/") and m == "GET":
            bid = route.split("/", 1)[1]
            if bid not in self.buckets:
                return self._not_found(h, "Bucket")
            b = self.buckets[bid]
            return self._send(h, 200, {"id": bid, "name": bid, "owner": "", "public": b["public"],
                                       "file_size_limit": b["file_size_limit"], "allowed_mime_types": None,
                                       "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
        if route.startswith("object/list/") and m == "POST":
            req.json = json.loads(self._read(h))
            bid = route.split("/", 2)[2]
            prefix = req.json.get("prefix", "").strip("/")
            search = req.json.get("search", "")
            items = [{"name": k.rsplit("/", 1)[-1], "id": k, "metadata": {"size": o["size"],
                                                                          "mimetype": o["content_type"]}}
                     for (b, k), o in self.objects.items()
                     if b == bid and k.rsplit("/", 1)[0] == prefix and k.rsplit("/", 1)[-1].startswith(search)]
            return self._send(h, 200, items)
        if route.startswith("object/sign/") and m == "POST":
            req.json = json.loads(self._read(h))
            bid, key = route.split("/", 3)[2:]
            if (bid, key) not in self.objects:
                return self._not_found(h, "Object")
            token = secrets.token_urlsafe(16)
            self.tokens[token] = (bid, key)
            return self._send(h, 200, {"signedURL": f"/object/sign/{bid}/{urllib.parse.quote(key)}?token={token}"})
        if route.startswith("object/sign/") and m == "GET":
            bid, key = route.split("/", 3)[2:]
            if self.tokens.get(req.query.get("token", "")) != (bid, key):
                return self._send(h, 400, {"statusCode": "400", "error": "InvalidJWT", "message": "bad token"})
            return self._object(h, bid, key, download=req.query.get("download"))
        if route.startswith("object/public/") and m == "GET":
            bid, key = route.split("/", 3)[2:]
            if not self.buckets.get(bid, {}).get("public"):
                return self._not_found(h, "Object")
            return self._object(h, bid, key)
        if route.startswith("object/") and m == "GET":  # authenticated read (storage3's download route)
            bid, key = route.split("/", 2)[1:]
            return self._object(h, bid, key)
        if route.startswith("object/") and m == "POST":
            bid, key = route.split("/", 2)[1:]
            return self._upload(h, req, bid, key)
        if route == "upload/resumable" and m == "POST":
            return self._tus_create(h, req)
        if route.startswith("upload/resumable/") and m in ("HEAD", "PATCH"):
            uid = route.rsplit("/", 1)[1]
            up = self.uploads.get(uid)
            if up is None:
                self._drain(h)
                return self._send(h, 404, {"statusCode": "404", "error": "not_found", "message": "no upload"})
            if m == "HEAD":
                return self._send(h, 200, headers={"Upload-Offset": str(up["offset"]),
                                                   "Upload-Length": str(up["length"]), "Tus-Resumable": "1.0.0"})
            return self._tus_patch(h, req, uid, up)
        self._drain(h)
        self._send(h, 404, {"statusCode": "404", "error": "not_found", "message": f"no route {m} {route}"})

    def _object(self, h: BaseHTTPRequestHandler, bid: str, key: str, download: str | None = None) -> None:
        obj = self.objects.get((bid, key))
        if obj is None:
            return self._not_found(h, "Object")
        headers = {"Cache-Control": f"max-age={obj['cache_control']}"}
        if download is not None:
            headers["Content-Disposition"] = f'attachment; filename="{download or key.rsplit("/", 1)[-1]}"'
        self._send(h, 200, headers=headers, raw=obj["file"].read_bytes(), content_type=obj["content_type"])

    def _store(self, bid: str, key: str, file: Path, content_type: str, cache_control: str, upsert: bool) -> bool:
        with self._lock:
            if (bid, key) in self.objects and not upsert:
                return False
            self.objects[(bid, key)] = {"file": file, "size": file.stat().st_size, "content_type": content_type,
                                        "cache_control": cache_control}
            return True

    def _too_big(self, bid: str, size: int) -> bool:
        limit = self.buckets[bid]["file_size_limit"]
        return bool(limit) and size > limit

    def _upload(self, h: BaseHTTPRequestHandler, req: Req, bid: str, key: str) -> None:
        raw = self._read(h)
        req.body_size = len(raw)
        if bid not in self.buckets:
            return self._not_found(h, "Bucket")
        ctype = req.headers.get("content-type", "")
        msg = email.message_from_bytes(f"Content-Type: {ctype}\r\n\r\n".encode() + raw, policy=email.policy.HTTP)
        payload = b""
        part_type = ""
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            data = part.get_payload(decode=True) or b""
            if part.get_filename() is not None:
                payload, part_type = data, part.get_content_type()
                req.form[name] = {"filename": part.get_filename(), "content_type": part_type, "size": len(data)}
            else:
                req.form[name] = data.decode()
        if self._too_big(bid, len(payload)):
            return self._send(h, 400, {"statusCode": "413", "error": "Payload too large",
                                       "message": "The object exceeded the maximum allowed size"})
        f = self._file()
        f.write_bytes(payload)
        if not self._store(bid, key, f, part_type, req.form.get("cacheControl", "3600"),
                           req.headers.get("x-upsert") == "true"):
            return self._send(h, 400, {"statusCode": "409", "error": "Duplicate", "message": "already exists"})
        self._send(h, 200, {"Key": f"{bid}/{key}", "Id": secrets.token_hex(8)})

    def _tus_create(self, h: BaseHTTPRequestHandler, req: Req) -> None:
        self._drain(h)
        meta = {}
        for pair in req.headers.get("upload-metadata", "").split(","):
            if pair.strip():
                k, _, v = pair.strip().partition(" ")
                meta[k] = base64.b64decode(v).decode()
        req.json = meta
        bid, length = meta.get("bucketName", ""), int(req.headers.get("upload-length", "-1"))
        if req.headers.get("tus-resumable") != "1.0.0" or length < 0:
            return self._send(h, 400, {"statusCode": "400", "error": "InvalidRequest", "message": "not TUS 1.0.0"})
        if bid not in self.buckets:
            return self._not_found(h, "Bucket")
        if self._too_big(bid, length):
            return self._send(h, 413, {"statusCode": "413", "error": "Payload too large",
                                       "message": "The object exceeded the maximum allowed size"})
        uid = secrets.token_hex(8)
        f = self._file()
        f.touch()
        self.uploads[uid] = {"bucket": bid, "name": meta["objectName"], "length": length, "offset": 0, "file": f,
                             "content_type": meta.get("contentType", "application/octet-stream"),
                             "cache_control": meta.get("cacheControl", "3600"),
                             "upsert": req.headers.get("x-upsert") == "true"}
        self._send(h, 201, headers={"Location": f"{self.url}/storage/v1/upload/resumable/{uid}",
                                    "Tus-Resumable": "1.0.0"})

    def _tus_patch(self, h: BaseHTTPRequestHandler, req: Req, uid: str, up: dict[str, Any]) -> None:
        offset = int(req.headers.get("upload-offset", "-1"))
        if offset != up["offset"] or req.headers.get("content-type") != "application/offset+octet-stream":
            self._drain(h)
            return self._send(h, 409, {"statusCode": "409", "error": "Conflict", "message": "offset mismatch"})
        left = int(req.headers.get("content-length") or 0)
        req.body_size = left
        with open(up["file"], "r+b") as f:
            f.seek(offset)
            while left > 0:
                piece = h.rfile.read(min(PIECE, left))
                if not piece:
                    break
                f.write(piece)
                left -= len(piece)
                up["offset"] += len(piece)
        if up["offset"] == up["length"]:
            if not self._store(up["bucket"], up["name"], up["file"], up["content_type"], up["cache_control"],
                               up["upsert"]):
                return self._send(h, 409, {"statusCode": "409", "error": "Duplicate", "message": "exists"})
        self._send(h, 204, headers={"Upload-Offset": str(up["offset"]), "Tus-Resumable": "1.0.0"})
