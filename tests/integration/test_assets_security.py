"""Hostile downloads (issue 7): every rule proven against real local servers that record each connection.

The servers live on loopback, which the policy refuses; each test shows the refusal first (the server saw no
connection at all), then, where a download should work, that it does once ASSET_ALLOW_PRIVATE_NETWORKS
exempts exactly that server. Only the DNS-trick tests replace the resolver (``socket.getaddrinfo``).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from mindscript import assets, layers, voice
from mindscript.errors import (
    AssetNotFound,
    AssetRefused,
    AssetTooLarge,
    DownloadFailed,
    InvalidAudio,
    PermanentError,
    RenderError,
    TransientError,
)
from mindscript.job import parse_job
from mindscript.settings import Settings, get_settings
from tests.servers.assets import (
    AssetServer,
    chunked,
    endless,
    lying_length,
    make_pki,
    no_length,
    redirect,
    send_bytes,
    send_file,
    stall,
    trickle,
)

FIELD = "payload.projectData.layers.background.trackUrl"
TOKEN = "sig=SECRET-TOKEN-123"
BODY = bytes(range(256)) * 64  # 16 KiB
LOOPBACK = "127.0.0.1/32"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"), dns=("localhost", "assets.test", "rebind.test"))


@pytest.fixture
def https(pki: tuple[Any, Path]) -> Iterator[AssetServer]:
    with AssetServer("127.0.0.1", tls=pki[0]) as server:
        yield server


@pytest.fixture
def http() -> Iterator[AssetServer]:
    with AssetServer("127.0.0.1") as server:
        yield server


def policy(pki: tuple[Any, Path] | None = None, **settings: Any) -> assets.FetchPolicy:
    """The policy a worker with these settings uses (read through Settings, as the worker does)."""
    if pki is not None:
        settings.setdefault("asset_ca_bundle", pki[1])
    return assets.FetchPolicy.from_settings(Settings(**settings))


def fetch(url: str, dest: Path, pol: assets.FetchPolicy, *, max_bytes: int = 1 << 20, timeout_s: float = 5.0) -> Path:
    return assets.fetch(url, dest, name="background-src", max_bytes=max_bytes, timeout_s=timeout_s,
                        allow_local=False, field=FIELD, policy=pol)


def refused(exc_type: type[RenderError], url: str, dest: Path, pol: assets.FetchPolicy, match: str,
            **kw: Any) -> RenderError:
    """Expect ``exc_type``; its message names the field and the URL without its token; nothing is left."""
    with pytest.raises(exc_type, match=match) as info:
        fetch(url, dest, pol, **kw)
    message = info.value.message
    assert message.startswith(f"{FIELD}: ") and assets.redact_url(url)[:60] in message, message
    assert "SECRET" not in message and "sig=" not in message
    assert not list(dest.glob("background-src*")), "a refused download left a file behind"
    return info.value


# ---- scheme, allowance, TLS ----
def test_https_download_refused_on_loopback_then_allowed_explicitly(https: AssetServer, pki: Any,
                                                                     tmp_path: Path) -> None:
    https.routes["/music/bed.mp3"] = send_bytes(BODY)
    url = https.url(f"/music/bed.mp3?{TOKEN}", host="localhost")
    refused(AssetRefused, url, tmp_path, policy(pki), "resolves to 127.0.0.1, a loopback address")
    assert https.connections == 0 and https.requests == []

    got = fetch(url, tmp_path, policy(pki, asset_allow_private_networks=LOOPBACK))
    assert got == tmp_path / "background-src.mp3" and got.read_bytes() == BODY
    assert [(r.path, r.host) for r in https.requests] == [(f"/music/bed.mp3?{TOKEN}", f"localhost:{https.port}")]


def test_plain_http_needs_its_own_setting(http: AssetServer, tmp_path: Path) -> None:
    http.routes["/a.wav"] = send_bytes(BODY)
    url = http.url("/a.wav")
    allowed = {"asset_allow_private_networks": LOOPBACK}
    refused(AssetRefused, url, tmp_path, policy(**allowed), "plain http; only https is allowed")
    assert http.connections == 0
    assert fetch(url, tmp_path, policy(allow_http_assets=True, **allowed)).read_bytes() == BODY
    assert len(http.requests) == 1


def test_certificate_is_verified_against_the_name_not_the_address(https: AssetServer, pki: Any,
                                                                  tmp_path: Path) -> None:
    https.routes["/a.mp3"] = send_bytes(BODY)
    allowed = policy(pki, asset_allow_private_networks=LOOPBACK)
    # The certificate names localhost/assets.test only: the bare address must not pass.
    refused(PermanentError, https.url("/a.mp3"), tmp_path, allowed, "did not verify: IP address mismatch")
    # Not signed by a CA the worker trusts (no ASSET_CA_BUNDLE: the public trust store).
    refused(PermanentError, https.url("/a.mp3", host="localhost"), tmp_path,
            policy(asset_allow_private_networks=LOOPBACK), "did not verify")
    assert https.requests == [] and https.connections == 2  # connected, refused the certificate, sent nothing


def test_credentials_in_the_url_and_other_schemes_are_refused(https: AssetServer, pki: Any, tmp_path: Path) -> None:
    https.routes["/a.mp3"] = send_bytes(BODY)
    allowed = policy(pki, asset_allow_private_networks=LOOPBACK)
    refused(AssetRefused, f"https://user:pw@localhost:{https.port}/a.mp3", tmp_path, allowed, "credentials")
    for url in ("ftp://localhost/a.mp3", "gopher://localhost:70/_x", "data:audio/mp3;base64,AAAA"):
        with pytest.raises(AssetRefused, match="unsupported URL scheme"):
            fetch(url, tmp_path, allowed)
    with pytest.raises(AssetRefused, match="local files are not allowed"):
        fetch("file:///etc/passwd", tmp_path, allowed)
    assert https.connections == 0


def test_request_line_cannot_be_injected(https: AssetServer, pki: Any, tmp_path: Path) -> None:
    # Raw CR/LF are dropped by URL parsing, encoded ones stay encoded, spaces are encoded: one request line.
    https.routes["/a%20bX-Injected:%201.mp3"] = send_bytes(BODY)
    https.routes["/c%0d%0aX-Injected:%201.mp3"] = send_bytes(BODY)
    pol = policy(pki, asset_allow_private_networks=LOOPBACK)
    for raw in ("/a b\r\nX-Injected: 1.mp3", "/c%0d%0aX-Injected: 1.mp3"):
        assert fetch(https.url(raw, host="localhost"), tmp_path, pol).read_bytes() == BODY
    assert [r.path for r in https.requests] == ["/a%20bX-Injected:%201.mp3", "/c%0d%0aX-Injected:%201.mp3"]


# ---- addresses: real resolution, real servers ----
@pytest.mark.parametrize("host", [
    "127.0.0.1", "localhost", "LOCALHOST.", "2130706433", "0x7f000001", "127.1", "\u24dbocalhost", "0.0.0.0",
    "::ffff:127.0.0.1", "::ffff:7f00:1",
])
def test_loopback_in_any_spelling_is_refused_before_connecting(http: AssetServer, tmp_path: Path, host: str) -> None:
    http.routes["/a.mp3"] = send_bytes(BODY)
    url = http.url("/a.mp3", host=host)
    refused(AssetRefused, url, tmp_path, policy(allow_http_assets=True), "loopback|unspecified")
    assert http.connections == 0 and http.requests == []


@pytest.mark.parametrize("host", ["localhost", "2130706433", "127.1"])
def test_allowed_loopback_spellings_reach_the_server(http: AssetServer, tmp_path: Path, host: str) -> None:
    http.routes["/a.mp3"] = send_bytes(BODY)
    got = fetch(http.url("/a.mp3", host=host), tmp_path,
                policy(allow_http_assets=True, asset_allow_private_networks=LOOPBACK))
    assert got.read_bytes() == BODY and http.requests[0].host == f"{host}:{http.port}"


def test_unspecified_address_stays_refused_inside_an_allowance(http: AssetServer, tmp_path: Path) -> None:
    # 0.0.0.0 reaches the local machine on Linux; exempting 127.0.0.0/8 must not exempt it.
    http.routes["/a.mp3"] = send_bytes(BODY)
    refused(AssetRefused, http.url("/a.mp3", host="0.0.0.0"), tmp_path,
            policy(allow_http_assets=True, asset_allow_private_networks="127.0.0.0/8"), "unspecified")
    assert http.connections == 0


def test_ipv6_loopback(tmp_path: Path) -> None:
    with AssetServer("::1") as server:
        server.routes["/a.mp3"] = send_bytes(BODY)
        refused(AssetRefused, server.url("/a.mp3"), tmp_path, policy(allow_http_assets=True), "loopback")
        assert server.connections == 0
        got = fetch(server.url("/a.mp3"), tmp_path, policy(allow_http_assets=True,
                                                           asset_allow_private_networks="::1/128"))
        assert got.read_bytes() == BODY and server.requests[0].host == f"[::1]:{server.port}"


@pytest.mark.parametrize(("address", "kind"), [
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd12::1", "private"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"), ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"), ("ff02::1", "multicast"), ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"), ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("::1", "loopback"),
    ("100.64.0.1", "shared"), ("fec0::1", "site-local"), ("192.0.2.1", "private"), ("198.18.0.1", "private"),
    ("::ffff:10.0.0.1", "10.0.0.1 embedded"), ("2002:7f00:1::1", "127.0.0.1 embedded"),
    ("64:ff9b::a00:1", "10.0.0.1 embedded"), ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1 embedded"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("100.100.100.200", "metadata"),
    ("168.63.129.16", "metadata"), ("169.254.170.2", "metadata"),
])
def test_address_classes_refused(address: str, kind: str) -> None:
    reason = assets.FetchPolicy().address_refusal(ipaddress.ip_address(address))
    assert reason is not None and kind in reason


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "1.1.1.1"])
def test_public_addresses_pass(address: str) -> None:
    assert assets.FetchPolicy().address_refusal(ipaddress.ip_address(address)) is None


def test_metadata_refused_even_inside_an_allowance() -> None:
    pol = policy(asset_allow_private_networks="169.254.0.0/16,fd00::/8,100.64.0.0/10,0.0.0.0/0")
    for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254"):
        assert "metadata" in (pol.address_refusal(ipaddress.ip_address(address)) or "")
    assert pol.address_refusal(ipaddress.ip_address("169.254.1.1")) is None  # the allowance itself works


# ---- DNS tricks (the resolver is replaced: the only place these tests do so) ----
Resolver = Callable[..., list[tuple[Any, ...]]]


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Names answer with scripted address lists, one list per lookup (the last repeats); returns the lookups."""
    real: Resolver = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(name)
        script = answers[name]
        addresses = script[min(len(lookups) - 1, len(script) - 1)]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, int(port)) if ":" not in a else (a, int(port), 0, 0)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def test_a_public_looking_name_resolving_to_loopback_is_refused(https: AssetServer, pki: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    https.routes["/a.mp3"] = send_bytes(BODY)
    fake_dns(monkeypatch, {"assets.test": [["127.0.0.1"]]})
    refused(AssetRefused, https.url("/a.mp3", host="assets.test"), tmp_path, policy(pki),
            "'assets.test' .* resolves to 127.0.0.1, a loopback address")
    assert https.connections == 0


def test_every_answer_is_checked(https: AssetServer, pki: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    https.routes["/a.mp3"] = send_bytes(BODY)
    fake_dns(monkeypatch, {"assets.test": [["93.184.216.34", "127.0.0.1"]]})
    refused(AssetRefused, https.url("/a.mp3", host="assets.test"), tmp_path, policy(pki), "127.0.0.1")
    fake_dns(monkeypatch, {"assets.test": [["127.0.0.1", "127.0.0.2"]]})  # one allowed, one not
    refused(AssetRefused, https.url("/a.mp3", host="assets.test"), tmp_path,
            policy(pki, asset_allow_private_networks=LOOPBACK), "127.0.0.2")
    assert https.connections == 0


def test_dns_rebinding_cannot_redirect_the_connection(pki: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The first answer is checked and allowed; a second lookup would answer 127.0.0.2, where another server
    # listens on the same port. The connection must go to the address that was checked.
    with AssetServer("127.0.0.1", tls=pki[0]) as good, AssetServer("127.0.0.2", port=good.port, tls=pki[0]) as evil:
        good.routes["/a.mp3"] = send_bytes(BODY)
        evil.routes["/a.mp3"] = send_bytes(b"internal secrets")
        lookups = fake_dns(monkeypatch, {"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
        got = fetch(good.url("/a.mp3", host="rebind.test"), tmp_path,
                    policy(pki, asset_allow_private_networks=LOOPBACK))
        assert got.read_bytes() == BODY and lookups == ["rebind.test"]
        assert [r.host for r in good.requests] == [f"rebind.test:{good.port}"]  # TLS verified the name
        assert evil.connections == 0


def test_metadata_name_refused_even_with_link_local_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"metadata.google.internal": [["169.254.169.254"]], "imds.test": [["fd00:ec2::254"]]})
    connects: list[Any] = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: connects.append(addr))
    pol = policy(allow_http_assets=True, asset_allow_private_networks="169.254.0.0/16,fd00::/8")
    for url in ("http://metadata.google.internal/computeMetadata/v1/?recursive=true",
                "http://imds.test/latest/meta-data/iam/security-credentials/"):
        refused(AssetRefused, url, tmp_path, pol, "a cloud metadata address")
    assert connects == []


# ---- redirects: followed here, every hop checked ----
def test_redirect_to_a_forbidden_address_is_refused(https: AssetServer, pki: Any, tmp_path: Path) -> None:
    with AssetServer("127.0.0.2") as inner:
        inner.routes["/admin"] = send_bytes(b"internal")
        https.routes["/a.mp3"] = redirect(inner.url("/admin"))
        pol = policy(pki, allow_http_assets=True, asset_allow_private_networks=LOOPBACK)
        refused(AssetRefused, https.url(f"/a.mp3?{TOKEN}", host="localhost"), tmp_path, pol,
                "resolves to 127.0.0.2, a loopback address")
        assert len(https.requests) == 1 and inner.connections == 0


def test_redirect_scheme_and_host_are_rechecked(https: AssetServer, http: AssetServer, pki: Any,
                                                tmp_path: Path) -> None:
    http.routes["/plain.mp3"] = send_bytes(BODY)
    https.routes["/down"] = redirect(http.url("/plain.mp3"), 301)
    https.routes["/file"] = redirect("file:///etc/passwd", 307)
    https.routes["/other"] = redirect(f"https://assets.test:{https.port}/a.mp3", 308)
    pol = policy(pki, asset_allow_private_networks=LOOPBACK, asset_host_allowlist="localhost")
    refused(AssetRefused, https.url("/down", host="localhost"), tmp_path, pol, "plain http")
    refused(AssetRefused, https.url("/file", host="localhost"), tmp_path, pol, "unsupported URL scheme 'file'")
    refused(AssetRefused, https.url("/other", host="localhost"), tmp_path, pol,
            "'assets.test' .* is not in ASSET_HOST_ALLOWLIST")
    assert http.connections == 0 and len(https.requests) == 3


def test_redirects_followed_up_to_five(https: AssetServer, pki: Any, tmp_path: Path) -> None:
    for i in range(6):
        https.routes[f"/hop{i}"] = redirect(f"/hop{i + 1}")  # relative Location
    https.routes["/hop5"] = send_bytes(BODY)
    pol = policy(pki, asset_allow_private_networks=LOOPBACK)
    assert fetch(https.url("/hop0", host="localhost"), tmp_path, pol).read_bytes() == BODY
    assert len(https.requests) == 6
    https.routes["/hop5"] = redirect("/hop6")
    https.requests.clear()
    refused(AssetRefused, https.url("/hop0", host="localhost"), tmp_path, pol, "redirected more than 5 times")
    assert len(https.requests) == 6  # the 6th redirect is never followed


# ---- size, time ----
def test_declared_size_over_the_cap_is_refused_before_the_body(https: AssetServer, pki: Any, tmp_path: Path) -> None:
    https.routes["/big.mp3"] = send_bytes(b"\0" * 300_000)
    refused(AssetTooLarge, https.url(f"/big.mp3?{TOKEN}", host="localhost"), tmp_path,
            policy(pki, asset_allow_private_networks=LOOPBACK), "300000 bytes, over the 65536-byte limit",
            max_bytes=65536)


def test_lying_content_length_never_lets_more_than_declared_through(https: AssetServer, pki: Any,
                                                                    tmp_path: Path) -> None:
    https.routes["/lie.mp3"] = lying_length(1000, b"\1" * 1_000_000)
    got = fetch(https.url("/lie.mp3", host="localhost"), tmp_path,
                policy(pki, asset_allow_private_networks=LOOPBACK), max_bytes=65536)
    assert got.stat().st_size == 1000  # the framing is the declared length; the rest is never read


@pytest.mark.parametrize("framing", ["chunked", "no-length"])
def test_bodies_without_a_length_are_cut_at_the_cap(https: AssetServer, pki: Any, tmp_path: Path,
                                                    framing: str) -> None:
    https.routes["/endless.mp3"] = chunked(endless()) if framing == "chunked" else no_length(endless())
    started = time.monotonic()
    refused(AssetTooLarge, https.url(f"/endless.mp3?{TOKEN}", host="localhost"), tmp_path,
            policy(pki, asset_allow_private_networks=LOOPBACK), "sent more than the 1048576-byte limit")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("after_headers", [True, False])
def test_a_silent_server_times_out(https: AssetServer, pki: Any, tmp_path: Path, after_headers: bool) -> None:
    https.routes["/stall.mp3"] = stall(5.0, after_headers=after_headers)
    started = time.monotonic()
    exc = refused(DownloadFailed, https.url("/stall.mp3", host="localhost"), tmp_path,
                  policy(pki, asset_allow_private_networks=LOOPBACK), r"sent nothing for 0.5 s", timeout_s=0.5)
    assert isinstance(exc, TransientError) and time.monotonic() - started < 2.5


def test_a_trickling_server_hits_the_deadline(https: AssetServer, pki: Any, tmp_path: Path) -> None:
    https.routes["/slow.mp3"] = trickle(0.05, 10.0)  # never silent for the 1 s read timeout
    started = time.monotonic()
    refused(DownloadFailed, https.url("/slow.mp3", host="localhost"), tmp_path,
            policy(pki, asset_allow_private_networks=LOOPBACK, download_deadline_s=1.5),
            "longer than 1.5 s .DOWNLOAD_DEADLINE_S.", timeout_s=1.0)
    assert 1.4 < time.monotonic() - started < 4.0


@pytest.mark.parametrize(("status", "exc_type"), [(404, AssetNotFound), (410, AssetNotFound),
                                                  (403, PermanentError), (503, DownloadFailed),
                                                  (429, DownloadFailed)])
def test_http_errors(https: AssetServer, pki: Any, tmp_path: Path, status: int,
                     exc_type: type[RenderError]) -> None:
    https.routes["/x.mp3"] = send_bytes(b"no", status=status, content_type="text/plain")
    refused(exc_type, https.url(f"/x.mp3?{TOKEN}", host="localhost"), tmp_path,
            policy(pki, asset_allow_private_networks=LOOPBACK), f"returned HTTP {status}")


def test_host_allowlist(https: AssetServer, pki: Any, tmp_path: Path) -> None:
    https.routes["/a.mp3"] = send_bytes(BODY)
    url = https.url("/a.mp3", host="localhost")
    refused(AssetRefused, url, tmp_path, policy(pki, asset_allow_private_networks=LOOPBACK,
                                                asset_host_allowlist="*.example.org, cdn.example.com"),
            "not in ASSET_HOST_ALLOWLIST")
    assert https.connections == 0
    pol = policy(pki, asset_allow_private_networks=LOOPBACK, asset_host_allowlist="cdn.example.com,localhost")
    assert fetch(url, tmp_path, pol).read_bytes() == BODY
    suffix = assets.FetchPolicy(host_allowlist=("*.example.org",))
    assert suffix.host_allowed("a.example.org") and not suffix.host_allowed("example.org")
    assert not suffix.host_allowed("evil-example.org") and not suffix.host_allowed("a.example.org.evil.com")


# ---- decoding: bombs, corrupt and non-audio files ----
def silent_flac(path: Path, minutes: int, rate: int) -> Path:
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        zeros = np.zeros(rate * 60, dtype=np.int16)
        for _ in range(minutes):
            f.write(zeros)
    return path


def bg_job(url: str) -> Any:
    return parse_job({"id": "hostile-1", "payload": {"projectData": {
        "durationMin": 0.05, "layers": {"background": {"enabled": True, "trackUrl": url}}}}})


def worker_settings(pki: Any, **kw: Any) -> Settings:
    return Settings(asset_ca_bundle=pki[1], asset_allow_private_networks=LOOPBACK, max_duration_minutes=0.05, **kw)


@pytest.mark.parametrize(("minutes", "rate"), [(60, 8000), (10, 44100)])
def test_decompression_bomb_background_is_refused_quickly(https: AssetServer, pki: Any, tmp_path: Path,
                                                          minutes: int, rate: int) -> None:
    bomb = silent_flac(tmp_path / "bomb.flac", minutes, rate)
    assert bomb.stat().st_size < 100_000  # under 100 KB that decodes to 10-60 minutes
    https.routes["/bomb.flac"] = send_file(bomb, "audio/flac")
    ws = tmp_path / "ws"
    ws.mkdir()
    started = time.monotonic()
    with pytest.raises(AssetTooLarge, match="decodes to more than 63 s") as info:
        layers.prepare_background(bg_job(https.url(f"/bomb.flac?{TOKEN}", host="localhost")),
                                  worker_settings(pki), ws, sample_rate=44100, allow_local=False)
    assert time.monotonic() - started < 10
    assert info.value.message.startswith(f"{FIELD}: 'https://localhost:{https.port}/bomb.flac': ")
    assert "SECRET" not in info.value.message and str(ws) not in info.value.message
    assert not (ws / "background.wav").exists() and not list(ws.glob("background-src*"))


@pytest.mark.parametrize("body", [
    b"<!doctype html><html><body>Sign in</body></html>" * 50,  # a login page instead of the track
    b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40,  # an MP3 tag followed by garbage
    b"fLaC" + b"\xff" * 5000,  # a FLAC signature with corrupt metadata
])
def test_non_audio_and_corrupt_backgrounds_fail_cleanly(https: AssetServer, pki: Any, tmp_path: Path,
                                                        body: bytes) -> None:
    https.routes["/track.mp3"] = send_bytes(body, content_type="audio/mpeg")
    ws = tmp_path / "ws"
    ws.mkdir()
    with pytest.raises(InvalidAudio) as info:
        layers.prepare_background(bg_job(https.url(f"/track.mp3?{TOKEN}", host="localhost")),
                                  worker_settings(pki), ws, sample_rate=44100, allow_local=False)
    message = info.value.message
    assert message.startswith(f"{FIELD}: 'https://localhost:{https.port}/track.mp3': ") and "SECRET" not in message
    assert str(ws) not in message and list(ws.iterdir()) == []


def test_uploaded_voice_bomb_and_garbage_are_clear_errors(https: AssetServer, pki: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = silent_flac(tmp_path / "bomb.flac", 10, 8000)
    https.routes["/take.flac"] = send_file(bomb, "audio/flac")
    https.routes["/take.m4a"] = send_bytes(b"<html>expired link</html>", content_type="text/html")
    # prepare_upload does not pass its settings' network policy to fetch (yet): the process settings apply.
    monkeypatch.setenv("ASSET_CA_BUNDLE", str(pki[1]))
    monkeypatch.setenv("ASSET_ALLOW_PRIVATE_NETWORKS", LOOPBACK)
    get_settings.cache_clear()
    settings = worker_settings(pki)
    for path, exc_type, match in (("/take.flac", AssetTooLarge, "decodes to more than 3 s"),
                                  ("/take.m4a", InvalidAudio, "could not be decoded")):
        ws = tmp_path / f"ws-{path[1:]}"
        ws.mkdir()
        with pytest.raises(exc_type, match=match):
            voice.prepare_upload(https.url(f"{path}?{TOKEN}", host="localhost"), ws, settings, sample_rate=44100)
    # the network rules apply to uploads as they do to tracks
    monkeypatch.delenv("ASSET_ALLOW_PRIVATE_NETWORKS")
    get_settings.cache_clear()
    with pytest.raises(AssetRefused, match="voiceRef: .* loopback"):
        voice.prepare_upload(https.url("/take.flac", host="localhost"), tmp_path,
                             Settings(asset_ca_bundle=pki[1]), sample_rate=44100)
    assert len(https.requests) == 2
    get_settings.cache_clear()
