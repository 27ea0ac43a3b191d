"""A small threaded HTTP server base for the vendor test servers: records requests, scripts faults.

Binds 127.0.0.1 only. Each vendor module subclasses ``VendorServer`` and implements ``handle`` in the
vendor's documented wire format. Faults queued with ``fail_next`` are answered, in order, before any real
handling (each still recorded); ``fail_always`` answers every request with one fault. Random faults (the
soak, bench/soak.py): with ``fault_rate`` each request, with that probability, gets one of ``fault_replies``
or, when ``stall_s`` is set, a stall (the real answer after ``stall_s`` seconds, past the client's timeout);
``seed`` makes the draws repeatable. ``by_chunk()`` counts requests per chunk (voice, text and context).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, payload: Any) -> Reply:
        return cls(status, json.dumps(payload).encode(), "application/json")


def speech_like_pcm(text: str, sample_rate: int, seconds_per_char: float, *, min_s: float = 0.4) -> bytes:
    """Deterministic mono s16le "speech": a harmonic voice, pitch from the text, in ~4 Hz syllables."""
    seconds = max(min_s, len(text) * seconds_per_char)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    f0 = 110.0 + seed % 90
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t), 0.0, None) ** 0.5
    x = 0.25 * voice * syllables
    ramp = min(n // 2, int(0.01 * sample_rate))
    if ramp:
        env = np.ones(n)
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
        x *= env
    return np.clip(np.rint(x * 32767), -32768, 32767).astype("<i2").tobytes()


class LoopbackServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 (a free port) that hands every request to ``_serve``.

    Subclasses call ``_start_http()`` at the end of ``__init__`` and implement ``_serve(handler)``;
    ``METHODS`` names the HTTP methods they answer. Use as a context manager.
    """

    METHODS: tuple[str, ...] = ("GET", "POST")

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def _start_http(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        def dispatch(handler: BaseHTTPRequestHandler) -> None:
            server._serve(handler)

        for method in self.METHODS:
            setattr(Handler, f"do_{method}", dispatch)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def origin(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"


class VendorServer(LoopbackServer):
    """Base: start/stop, request log, scripted and random faults, optional per-request delay."""

    def __init__(self, *, delay_s: float = 0.0, seconds_per_char: float = 0.01, fault_rate: float = 0.0,
                 fault_replies: Sequence[Reply] = (), stall_s: float = 0.0, seed: int | None = None) -> None:
        self.delay_s = delay_s
        self.seconds_per_char = seconds_per_char
        self.requests: list[Recorded] = []
        self._faults: list[Reply] = []
        self.fail_always: Reply | None = None
        self.fault_rate = fault_rate
        self.fault_replies = list(fault_replies)
        self.stall_s = stall_s
        self.injected: Counter[str] = Counter()  # random faults answered: "429", "500", "stall", ...
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._active = 0
        self.max_active = 0
        self._start_http()

    # scripting
    def fail_next(self, *replies: Reply) -> None:
        with self._lock:
            self._faults.extend(replies)

    def count(self, predicate: Any = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if predicate is None or predicate(r))

    def handle(self, req: Recorded) -> Reply:  # pragma: no cover - subclasses implement
        raise NotImplementedError

    def chunk_of(self, req: Recorded) -> tuple[str, str, str] | None:
        """(voice, text, context) a synthesis request asks for (context: whatever else the vendor conditions the
        audio on, e.g. neighbouring text; "" when nothing); None for other requests. Subclasses implement."""
        return None

    def by_chunk(self) -> dict[str, tuple[int, str, str]]:
        """Synthesis requests per chunk: sha256(voice|text|context)[:16] -> (requests, voice, text)."""
        with self._lock:
            requests = list(self.requests)
        counts: Counter[tuple[str, str, str]] = Counter(c for r in requests if (c := self.chunk_of(r)) is not None)
        return {hashlib.sha256(f"{v}|{t}|{c}".encode()).hexdigest()[:16]: (n, v, t) for (v, t, c), n in counts.items()}

    def _random_fault(self) -> Reply | str | None:
        """Called under the lock: a random fault reply, "stall", or None (most requests)."""
        if self.fault_rate <= 0 or self._random.random() >= self.fault_rate:
            return None
        choices: list[Reply | str] = [*self.fault_replies, *(["stall"] if self.stall_s > 0 else [])]
        if not choices:
            return None
        choice = self._random.choice(choices)
        self.injected["stall" if isinstance(choice, str) else str(choice.status)] += 1
        return choice

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlparse(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        req = Recorded(h.command, parsed.path, dict(urllib.parse.parse_qsl(parsed.query)),
                       {k.lower(): v for k, v in h.headers.items()}, body)
        if req.path == "/_stats":  # for benchmarks that run the server in another process
            with self._lock:
                stats = {"requests": len(self.requests), "max_active": self.max_active,
                         "injected": dict(self.injected)}
            reply = Reply.json(200, stats)
            h.send_response(200)
            h.send_header("Content-Type", reply.content_type)
            h.send_header("Content-Length", str(len(reply.body)))
            h.end_headers()
            h.wfile.write(reply.body)
            return
        with self._lock:
            self.requests.append(req)
            fault = self._faults.pop(0) if self._faults else self.fail_always
            chaos = self._random_fault() if fault is None else None
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            if chaos == "stall":
                time.sleep(self.stall_s)  # the client has given up by now; the answer below goes nowhere
            elif isinstance(chaos, Reply):
                fault = chaos
            reply = fault if fault is not None else self.handle(req)
        finally:
            with self._lock:
                self._active -= 1
        try:
            h.send_response(reply.status)
            h.send_header("Content-Type", reply.content_type)
            h.send_header("Content-Length", str(len(reply.body)))
            h.end_headers()
            h.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out (a stall) and hung up
            h.close_connection = True
