"""Dispatch's webhook sender against real local HTTP and HTTPS servers: it connects to the
address it checked (one lookup, Host and TLS server name set to the original host, the
certificate verified against that name), caps what it reads, keeps to its deadline, and sends
nothing to a name with any non-public address. Names resolve through a fake resolver."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shvya_dispatch.webhooks import WebhookSender, webhook_client
from tests.fakes.dns import FakeDNS

HOOK_HOST = "hooks.shvya.test"


@dataclass
class Site:
    port: int
    hosts: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for hooks.shvya.test only (not for 127.0.0.1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOOK_HOST)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOOK_HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("webhook-tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def _serve(context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, Site]:
    site = Site(0)

    async def hook(request: web.Request) -> web.StreamResponse:
        site.hosts.append(request.headers.get("Host", ""))
        if request.path == "/slow":
            await asyncio.sleep(1.5)
        if request.path == "/huge":
            response = web.StreamResponse(status=200)
            await response.prepare(request)
            for _ in range(256):
                await response.write(b"x" * 4096)
            return response
        return web.Response(status=200, text="thanks")

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    site.port = runner.addresses[0][1]
    return runner, site


@pytest.fixture
async def http_site() -> AsyncIterator[Site]:
    runner, site = await _serve()
    yield site
    await runner.cleanup()


@pytest.fixture
async def https_site(tls: tuple[Path, Path]) -> AsyncIterator[Site]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls)
    runner, site = await _serve(context)
    yield site
    await runner.cleanup()


@pytest.fixture
async def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    return FakeDNS().install(monkeypatch)


def sender(client, *, allow_private: bool = True, timeout: float = 3.0, cap: int = 16384):
    return WebhookSender(
        client, timeout=timeout, max_response_bytes=cap, allow_private=allow_private
    )


async def test_https_goes_to_the_checked_address_with_the_hosts_name_and_certificate(
    https_site: Site, dns: FakeDNS, tls: tuple[Path, Path]
) -> None:
    """The name is looked up once; the request reaches that address with Host and the TLS
    server name set to the name, so a certificate for the name verifies, and one for another
    name on the same address does not."""
    dns.table[HOOK_HOST] = ["127.0.0.1"]
    dns.table["other.shvya.test"] = ["127.0.0.1"]
    trust = ssl.create_default_context(cafile=str(tls[0]))
    async with webhook_client(3.0, verify=trust) as client:
        result = await sender(client).post(
            f"https://{HOOK_HOST}:{https_site.port}/hooks", b"{}", {"webhook-id": "msg_1"}
        )
        assert result.ok and result.status_code == 200, result
        assert result.address == "127.0.0.1" and result.response == "thanks"
        assert https_site.hosts == [f"{HOOK_HOST}:{https_site.port}"]
        assert dns.calls == [HOOK_HOST]

        wrong = await sender(client).post(
            f"https://other.shvya.test:{https_site.port}/hooks", b"{}", {}
        )
        assert not wrong.ok and wrong.status_code is None
        assert "certificate is not valid for 'other.shvya.test'" in (wrong.error or "")


async def test_nothing_is_sent_to_a_name_with_any_private_address(
    http_site: Site, dns: FakeDNS
) -> None:
    """With the guard on, a name resolving to loopback, or to a public and a loopback address,
    is refused before any connection, as is a literal link-local or IPv4-mapped address."""
    dns.table["rebind.shvya.test"] = ["93.184.216.34", "127.0.0.1"]
    dns.table["local.shvya.test"] = ["127.0.0.1"]
    async with webhook_client(3.0) as client:
        guarded = sender(client, allow_private=False)
        for url, words in [
            (f"http://rebind.shvya.test:{http_site.port}/", "resolves to 127.0.0.1"),
            (f"http://local.shvya.test:{http_site.port}/", "loopback"),
            (f"http://127.0.0.1:{http_site.port}/", "loopback"),
            (f"http://[::ffff:127.0.0.1]:{http_site.port}/", "carrying 127.0.0.1"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://[fe80::1]/", "link-local"),
            ("ftp://example.com/", "only http and https"),
        ]:
            result = await guarded.post(url, b"{}", {})
            assert not result.ok and words in (result.error or ""), (url, result)
            assert result.address is None
    assert http_site.hosts == []


async def test_the_response_is_capped_and_the_deadline_kept(http_site: Site, dns: FakeDNS) -> None:
    """A megabyte response is read only up to the cap (the attempt still succeeds), and an
    endpoint that does not answer in time is a failed attempt with the reason."""
    async with webhook_client(0.5) as client:
        capped = await sender(client, cap=1024, timeout=3.0).post(
            f"http://127.0.0.1:{http_site.port}/huge", b"{}", {}
        )
        assert capped.ok and capped.response is not None and len(capped.response) <= 1024
        slow = await sender(client, timeout=0.5).post(
            f"http://127.0.0.1:{http_site.port}/slow", b"{}", {}
        )
        assert not slow.ok and slow.status_code is None
        assert "no answer within 0.5s" in (slow.error or "") or "timed out" in (slow.error or "")


def test_a_literal_address_in_the_url_keeps_its_form() -> None:
    """IPv6 literals are bracketed in the URL the sender builds (a sanity check of httpx)."""
    url = httpx.URL("http://example.com:8080/x").copy_with(host=str(ipaddress.ip_address("::1")))
    assert str(url) == "http://[::1]:8080/x"
