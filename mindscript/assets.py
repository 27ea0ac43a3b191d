"""Fetching a job's input files (background track, uploaded recordings) into its workspace.

A source is an ``https://`` URL (``http://`` only with ALLOW_HTTP_ASSETS), a ``file://`` URI, or a local path;
local files are only accepted where the caller allows them (CLI renders), never for queue jobs.

Downloads are fetched by the worker on behalf of whoever wrote the job, so every hop is checked before any
byte is sent (``FetchPolicy``):

- the scheme (https; http only when allowed) and, with ASSET_HOST_ALLOWLIST, the host;
- every address the host resolves to: loopback, private, link-local, shared (CGNAT), multicast, reserved,
  unspecified and IPv6 forms embedding such an IPv4 address are refused unless a network in
  ASSET_ALLOW_PRIVATE_NETWORKS covers them; cloud metadata endpoints are refused always;
- the connection goes to the address that was checked (the name is resolved once per hop, so a DNS answer
  that changes between the check and the connect, "DNS rebinding", cannot redirect it); TLS still verifies
  the certificate against the host name;
- redirects are followed here, at most ``MAX_REDIRECTS``, each hop checked like the first;
- the byte cap is enforced on what arrives (Content-Length can lie; chunked bodies have none), a silent
  server fails after ``timeout_s`` and the whole download after ``FetchPolicy.deadline_s``.

Decompression bombs are the decoder's business: callers pass ``max_duration_s`` to
``audio_io.decode_to_wav`` and wrap its errors with ``for_field``.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import re
import shutil
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mindscript.errors import (
    AssetNotFound,
    AssetRefused,
    AssetTooLarge,
    DownloadFailed,
    PermanentError,
    RenderError,
)

if TYPE_CHECKING:
    from mindscript.settings import Settings

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5
USER_AGENT = "mindscript-render/0.1"
_CHUNK = 1 << 16
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_SHOWN_MAX = 200  # characters of a value quoted in an error message
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SUFFIX = re.compile(r"\.[a-z0-9]{1,7}")
_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*")

# Instance metadata services hand out cloud credentials: refused even inside ASSET_ALLOW_PRIVATE_NETWORKS.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack IMDS
    "169.254.170.2",    # AWS ECS task credentials
    "169.254.170.23",   # AWS EKS pod identity agent
    "fd00:ec2::254",    # AWS IMDS over IPv6
    "fd00:ec2::23",     # AWS EKS pod identity agent over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",    # Azure WireServer (a public address, so only this list catches it)
    "192.0.0.192",      # Oracle Cloud (classic)
))  # fmt: skip
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT: is_private misses it
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


@dataclass(frozen=True)
class FetchPolicy:
    """What a download may reach. The defaults are the production rules; ``from_settings`` reads them.

    ``allowed_networks`` exempts private ranges on purpose (an on-premises mirror; the tests' loopback
    servers); ``host_allowlist`` entries are exact host names, or ``*.example.com`` / ``.example.com`` for
    any subdomain.
    """

    allow_http: bool = False
    host_allowlist: tuple[str, ...] = ()
    allowed_networks: tuple[IPNetwork, ...] = ()
    ca_bundle: Path | None = None
    deadline_s: float = 600.0
    max_redirects: int = MAX_REDIRECTS

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        return cls(
            allow_http=settings.allow_http_assets,
            host_allowlist=tuple(h.lower().rstrip(".") for h in _split(settings.asset_host_allowlist)),
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False)
                                   for n in _split(settings.asset_allow_private_networks)),
            ca_bundle=settings.asset_ca_bundle,
            deadline_s=settings.download_deadline_s,
        )

    def host_allowed(self, host: str) -> bool:
        if not self.host_allowlist:
            return True
        for entry in self.host_allowlist:
            if entry.startswith(("*.", ".")):
                if host.endswith("." + entry.lstrip("*.")):
                    return True
            elif host == entry:
                return True
        return False

    def address_refusal(self, ip: IPAddress) -> str | None:
        """Why ``ip`` may not be connected to, or None when it may."""
        candidates = [*_embedded_ipv4(ip), ip]  # the embedded IPv4 address first: it names the real target
        for candidate in candidates:
            if candidate in METADATA_ADDRESSES:
                return "a cloud metadata address"
        if any(c in net for c in candidates for net in self.allowed_networks):
            return None
        for candidate in candidates:
            if (reason := _non_public(candidate)) is not None:
                return reason if candidate == ip else f"{reason} ({candidate} embedded in {ip})"
        return None

    def tls_context(self) -> ssl.SSLContext:
        """Certificate and host name verified (the default context); ASSET_CA_BUNDLE replaces the trust store."""
        if self.ca_bundle is not None:
            return ssl.create_default_context(cafile=str(self.ca_bundle))
        try:
            import certifi  # the same trust store the HTTP clients of the other adapters use
        except ImportError:  # pragma: no cover - certifi comes with requests/httpx
            return ssl.create_default_context()
        return ssl.create_default_context(cafile=certifi.where())


def fetch(
    source: str,
    dest_dir: Path,
    *,
    name: str,
    max_bytes: int,
    timeout_s: float,
    allow_local: bool,
    base_dir: Path | None = None,
    field: str = "source",
    policy: FetchPolicy | None = None,
) -> Path:
    """Copy or download ``source`` to ``dest_dir/name<suffix>`` with a byte cap; returns the path.

    ``name`` is the caller's own (a safe constant); the suffix is taken from the source only when it is a
    short plain extension, so nothing a job writes decides where the file lands. ``policy`` None reads the
    process settings (so no caller can skip the network rules).

    Raises:
        AssetRefused: the policy forbids the URL, a redirect target or an address.
        AssetNotFound / AssetTooLarge: missing (404/410, no such file) or over ``max_bytes``.
        DownloadFailed: connection failure, timeout, 408/429/5xx (transient).
        PermanentError: any other refusal (4xx, a certificate that does not verify, a bad local path).
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"name must be a short plain file name, got {name!r}")
    if not isinstance(source, str) or not source.strip():
        raise PermanentError(f"{field}: no source given (got {_clip(repr(source))})")
    try:
        parsed = urllib.parse.urlsplit(source)
    except ValueError as exc:
        raise AssetRefused(f"{field}: {shown(source)!r} is not a valid URL: {exc}") from exc
    suffix = Path(urllib.parse.unquote(parsed.path)).suffix.lower()
    dest = Path(dest_dir) / f"{name}{suffix if _SUFFIX.fullmatch(suffix) else ''}"
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        if policy is None:
            from mindscript.settings import get_settings

            policy = FetchPolicy.from_settings(get_settings())
        download(source, dest, max_bytes=max_bytes, timeout_s=timeout_s, field=field, policy=policy)
        return dest
    if scheme not in ("", "file") or (scheme == "" and len(source) > 1 and source[1] == ":"):
        raise AssetRefused(f"{field}: unsupported URL scheme {scheme!r} in {shown(source)!r}")
    if not allow_local:
        raise AssetRefused(f"{field}: local files are not allowed for this job (got {shown(source)!r})")
    return _copy_local(source, parsed, dest, max_bytes=max_bytes, base_dir=base_dir, field=field)


def _copy_local(source: str, parsed: urllib.parse.SplitResult, dest: Path, *, max_bytes: int,
                base_dir: Path | None, field: str) -> Path:
    raw = urllib.parse.unquote(parsed.path) if parsed.scheme.lower() == "file" else source
    if "\x00" in raw:
        raise PermanentError(f"{field}: the path {shown(source)!r} contains a NUL byte")
    try:
        path = Path(raw).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise AssetNotFound(f"{field}: file not found: {shown(source)!r}")
        size = path.stat().st_size
        if size > max_bytes:
            raise AssetTooLarge(f"{field}: {shown(source)!r} is {size} bytes, over the {max_bytes}-byte limit "
                                "(MAX_ASSET_BYTES)")
        shutil.copyfile(path, dest)
    except RenderError:
        raise
    except (OSError, RuntimeError) as exc:  # too long a name, a directory, no permission, ~user unknown
        dest.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise PermanentError(f"{field}: cannot read {shown(source)!r}: {reason}") from exc
    return dest


# ---- downloads ----
@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # lower-case ASCII (IDNA) name or IP literal, no brackets
    port: int
    path: str  # path and query, percent-encoded for the request line


def download(url: str, dest: Path, *, max_bytes: int, timeout_s: float, field: str, policy: FetchPolicy) -> None:
    """Stream ``url`` to ``dest`` under ``policy``, following up to ``policy.max_redirects`` checked redirects.

    ``dest`` exists afterwards only if the whole body arrived within the limits.
    """
    deadline = time.monotonic() + policy.deadline_s
    current = url
    try:
        for hop in range(policy.max_redirects + 1):
            # Messages quote the job's URL, and the hop too once redirected (both without query strings).
            what = repr(shown(url)) if hop == 0 else f"{shown(url)!r} (redirected to {shown(current)!r})"
            target = _check_url(current, policy, field, what)
            addresses = _resolve_checked(target, policy, field, what)
            location = _get(target, addresses, dest, current, max_bytes=max_bytes, timeout_s=timeout_s,
                            deadline=deadline, field=field, what=what, policy=policy)
            if location is None:
                return
            if hop == policy.max_redirects:
                raise AssetRefused(f"{field}: {shown(url)!r} redirected more than {policy.max_redirects} times")
            log.info("%s: %s redirects to %s", field, shown(current), shown(location))
            current = location
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _check_url(url: str, policy: FetchPolicy, field: str, what: str) -> _Target:
    try:
        p = urllib.parse.urlsplit(url)
        port = p.port
    except ValueError as exc:
        raise AssetRefused(f"{field}: {what} is not a valid URL: {exc}") from exc
    scheme = p.scheme.lower()
    if scheme == "http" and not policy.allow_http:
        raise AssetRefused(f"{field}: {what} is plain http; only https is allowed (ALLOW_HTTP_ASSETS)")
    if scheme not in ("http", "https"):
        raise AssetRefused(f"{field}: unsupported URL scheme {scheme!r} in {what}")
    if p.username is not None or p.password is not None:
        raise AssetRefused(f"{field}: {what} carries credentials before the host; not accepted")
    host = _normalize_host(p.hostname or "")
    if host is None:
        raise AssetRefused(f"{field}: {what} has no valid host name")
    if not policy.host_allowed(host):
        raise AssetRefused(f"{field}: host {host!r} of {what} is not in ASSET_HOST_ALLOWLIST")
    # Percent-encode anything outside the request-line alphabet: no CR/LF/space can reach the wire.
    path = urllib.parse.quote(p.path or "/", safe="/%:@!$&'()*+,;=~")
    if p.query:
        path += "?" + urllib.parse.quote(p.query, safe="/%:@!$&'()*+,;=~?")
    return _Target(scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80), path=path)


def _normalize_host(host: str) -> str | None:
    host = host.rstrip(".").lower()
    if not host:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return ascii_host if len(ascii_host) <= 253 and _HOSTNAME.fullmatch(ascii_host) else None


def _resolve_checked(target: _Target, policy: FetchPolicy, field: str, what: str) -> list[IPAddress]:
    """Every address of ``target.host`` (resolved once), each one allowed; else ``AssetRefused``."""
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(target.host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            if isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_NONAME:
                raise AssetNotFound(f"{field}: host {target.host!r} of {what} does not resolve: "
                                    f"{reason}") from exc
            raise DownloadFailed(f"{field}: cannot resolve host {target.host!r} of {what}: {reason}") from exc
        addresses = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if ip not in addresses:
                addresses.append(ip)
    if not addresses:
        raise DownloadFailed(f"{field}: host {target.host!r} of {what} has no address")
    for ip in addresses:  # all of them: a name answering with one public and one private address is refused
        if (reason := policy.address_refusal(ip)) is not None:
            raise AssetRefused(f"{field}: host {target.host!r} of {what} resolves to {ip}, {reason}; "
                               "refused (ASSET_ALLOW_PRIVATE_NETWORKS exempts private networks)")
    return addresses


def _get(target: _Target, addresses: list[IPAddress], dest: Path, url: str, *, max_bytes: int, timeout_s: float,
         deadline: float, field: str, what: str, policy: FetchPolicy) -> str | None:
    """One GET to a checked address. Writes the body to ``dest`` and returns None, or returns a redirect URL."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DownloadFailed(f"{field}: {what} took longer than {policy.deadline_s:g} s "
                             "(DOWNLOAD_DEADLINE_S)")
    conn = _PinnedConnection(target, addresses, timeout=min(timeout_s, remaining),
                             context=policy.tls_context() if target.scheme == "https" else None)
    # A watchdog ends the exchange at the deadline whatever the server does (a trickle of one byte per
    # second never trips the per-read timeout).
    expired = threading.Event()
    watchdog = threading.Timer(remaining, _expire, args=(conn, expired))
    watchdog.daemon = True
    watchdog.start()
    resp: http.client.HTTPResponse | None = None
    try:
        conn.request("GET", target.path, headers={"User-Agent": USER_AGENT, "Accept": "*/*",
                                                  "Accept-Encoding": "identity"})
        resp = conn.getresponse()
        if resp.status in _REDIRECT_STATUSES:
            location = resp.getheader("Location")
            if not location:
                raise PermanentError(f"{field}: {what} returned HTTP {resp.status} without a Location")
            return urllib.parse.urljoin(url, location.strip())
        _check_status(resp.status, field, what)
        declared = (resp.getheader("Content-Length") or "").strip()
        if declared.isdigit() and int(declared) > max_bytes:
            raise AssetTooLarge(f"{field}: {what} is {declared} bytes, over the {max_bytes}-byte limit "
                                "(MAX_ASSET_BYTES)")
        total = 0
        with open(dest, "wb") as out:
            while chunk := resp.read1(_CHUNK):
                total += len(chunk)
                if total > max_bytes:  # Content-Length can lie, and chunked bodies have none
                    raise AssetTooLarge(f"{field}: {what} sent more than the {max_bytes}-byte limit "
                                        "(MAX_ASSET_BYTES)")
                out.write(chunk)
        if expired.is_set():  # the watchdog's shutdown reads as end-of-file: the body may be cut short
            raise TimeoutError("deadline")
        log.info("%s: downloaded %s (%d bytes)", field, what, total)
        return None
    except RenderError:
        raise
    except ssl.SSLCertVerificationError as exc:
        raise PermanentError(f"{field}: the TLS certificate of {target.host!r} for {what} did not verify: "
                             f"{exc.verify_message or exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise DownloadFailed(f"{field}: {what} took longer than {policy.deadline_s:g} s "
                                 "(DOWNLOAD_DEADLINE_S)") from exc
        if isinstance(exc, TimeoutError):
            raise DownloadFailed(f"{field}: {what} sent nothing for {timeout_s:g} s "
                                 "(DOWNLOAD_TIMEOUT_S)") from exc
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        raise DownloadFailed(f"{field}: could not download {what}: {_clip(reason)}") from exc
    finally:
        watchdog.cancel()
        if resp is not None:
            resp.close()
        conn.close()


def _check_status(status: int, field: str, what: str) -> None:
    if 200 <= status < 300:
        return
    message = f"{field}: {what} returned HTTP {status}"
    if status in (404, 410):
        raise AssetNotFound(message)
    if status in (408, 425, 429) or status >= 500:
        raise DownloadFailed(message)
    raise PermanentError(message)


def _expire(conn: _PinnedConnection, expired: threading.Event) -> None:
    expired.set()
    conn.abort()


class _PinnedConnection(http.client.HTTPSConnection):
    """HTTP(S) to one of ``addresses`` (already checked), never to a fresh resolution of the host name.

    ``host`` stays the name, so the Host header, SNI and certificate verification use it; only the TCP
    connection is pinned. With ``context`` None it speaks plain HTTP.
    """

    def __init__(self, target: _Target, addresses: list[IPAddress], *, timeout: float,
                 context: ssl.SSLContext | None) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self.default_port = 443 if context is not None else 80  # the Host header omits the default port
        self._addresses = addresses
        self._tls = context

    def connect(self) -> None:
        last: OSError | None = None
        for ip in self._addresses:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect((str(ip), self.port))
            except OSError as exc:
                sock.close()
                last = exc
                continue
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host) if self._tls else sock
            return
        raise last or OSError("no address to connect to")

    def abort(self) -> None:
        """Unblock a read in another thread (the deadline watchdog)."""
        sock = self.sock
        if sock is not None:
            try:
                # The plain socket call, on purpose: SSLSocket.shutdown() would drop the TLS state under a reader.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address reaches or stands for: mapped, 6to4, Teredo client, NAT64."""
    if ip.version != 6:
        return []
    assert isinstance(ip, ipaddress.IPv6Address)
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        found.append(ip.teredo[1])
    if any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _non_public(ip: IPAddress) -> str | None:
    """The kind of non-public address ``ip`` is, or None for a globally routable unicast address."""
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip in _SHARED, "a shared (carrier-grade NAT) address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (ip.version == 6 and ip.is_site_local, "a site-local address"),  # type: ignore[union-attr]
        (not ip.is_global, "not a globally routable address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


# ---- messages ----
def redact_url(url: str) -> str:
    """The URL without its query string, fragment and credentials (signed URLs carry tokens there)."""
    try:
        p = urllib.parse.urlsplit(url)
        port = p.port
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0]
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port:
        host = f"{host}:{port}"
    return urllib.parse.urlunsplit((p.scheme, host, p.path, "", ""))


def shown(source: str) -> str:
    """``source`` as error messages and logs may quote it: redacted and at most 200 characters."""
    return _clip(redact_url(source))


def _clip(text: str) -> str:
    return text if len(text) <= _SHOWN_MAX else f"{text[:_SHOWN_MAX - 20]}...({len(text)} characters)"


def for_field(exc: RenderError, *, field: str, source: str, local: Path) -> RenderError:
    """``exc`` (raised while decoding the fetched copy ``local``) restated for the job's ``field`` and source.

    The same error class (so retry decisions do not change), the message led by the field and the redacted
    source, the workspace path reduced to its file name (results and logs carry no machine paths).
    """
    message = exc.message.replace(str(local), local.name)
    again = type(exc)(f"{field}: {shown(source)!r}: {message}", stage=exc.stage)
    return again
