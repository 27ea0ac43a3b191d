"""A file server for download tests: HTTP or HTTPS on any loopback address, recording every connection.

It answers with whatever a test scripts per path: honest files, lying Content-Length, endless chunked
bodies, stalls, trickles, redirects. ``connections`` counts TCP connections accepted (before TLS), so a test
can prove a refused download never even connected.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    host: str | None


class AssetServer:
    """Use as a context manager; ``routes[path] = route`` scripts an answer (unknown paths get 404)."""

    def __init__(self, host: str = "127.0.0.1", *, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.tls = tls
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self.connections = 0
        self.tls_failures = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with owner._lock:
                    owner.requests.append(Seen("GET", self.path, self.headers.get("Host")))
                route = owner.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    send_bytes(b"not found", status=404, content_type="text/plain")(self)
                else:
                    route(self)

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, addr = self.socket.accept()
                with owner._lock:
                    owner.connections += 1
                if owner.tls is not None:
                    # Handshake lazily, in the handler thread: a client that rejects the certificate must not
                    # block the accept loop.
                    sock = owner.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                return sock, addr

            def finish_request(self, request: Any, client_address: Any) -> None:
                if isinstance(request, ssl.SSLSocket):
                    request.settimeout(5)
                    try:
                        request.do_handshake()
                    except (ssl.SSLError, OSError):
                        with owner._lock:
                            owner.tls_failures += 1
                        return
                super().finish_request(request, client_address)

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hangs up mid-body is what several tests do on purpose

        self._httpd = Server((host, port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> AssetServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str, *, host: str | None = None) -> str:
        """The URL of ``path`` on this server, optionally naming it by another host name."""
        name = host or self.host
        if ":" in name:
            name = f"[{name}]"
        return f"{'https' if self.tls else 'http'}://{name}:{self.port}{path}"


# ---- routes ----
def send_bytes(body: bytes, *, status: int = 200, content_type: str = "application/octet-stream",
               headers: dict[str, str] | None = None) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    return route


def send_file(path: Path, content_type: str = "audio/mpeg") -> Route:
    return send_bytes(Path(path).read_bytes(), content_type=content_type)


def redirect(location: str, status: int = 302) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


def lying_length(declared: int, body: bytes) -> Route:
    """Declares ``declared`` bytes, sends ``body`` (longer) and closes."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "audio/mpeg")
        h.send_header("Content-Length", str(declared))
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        try:
            h.wfile.write(body)
        except OSError:
            pass

    return route


def no_length(pieces: Iterable[bytes]) -> Route:
    """HTTP/1.0 style: no Content-Length, the body ends when the connection closes."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "audio/mpeg")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        try:
            for piece in pieces:
                h.wfile.write(piece)
        except OSError:
            pass

    return route


def chunked(pieces: Iterable[bytes]) -> Route:
    """Transfer-Encoding: chunked, one chunk per piece (an endless iterable streams until the client leaves)."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "audio/mpeg")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.close_connection = True
        try:
            for piece in pieces:
                h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            h.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    return route


def stall(seconds: float, *, after_headers: bool = True) -> Route:
    """Sends headers (or nothing) and then nothing for ``seconds``."""

    def route(h: BaseHTTPRequestHandler) -> None:
        if after_headers:
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            h.wfile.flush()
        time.sleep(seconds)
        h.close_connection = True

    return route


def trickle(interval_s: float, total_s: float) -> Route:
    """One byte every ``interval_s`` for ``total_s``: never silent long enough for a per-read timeout."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(int(total_s / interval_s) + 1))
        h.end_headers()
        h.close_connection = True
        end = time.monotonic() + total_s
        try:
            while time.monotonic() < end:
                h.wfile.write(b"x")
                h.wfile.flush()
                time.sleep(interval_s)
        except OSError:
            pass

    return route


def endless(piece: bytes = b"\0" * 65536) -> Iterable[bytes]:
    while True:
        yield piece


# ---- TLS ----
def make_pki(directory: Path, *, dns: Iterable[str] = ("localhost",), ips: Iterable[str] = ()) -> tuple[
        ssl.SSLContext, Path]:
    """A throwaway CA and a server certificate for ``dns``/``ips``: (server context, CA bundle path)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mindscript test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, next(iter(dns), "server"))]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx, ca_path
