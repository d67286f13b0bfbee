"""The knowledge base's URL fetch behind the SSRF guard: loopback, private, link-local (cloud
metadata), IPv6 loopback, IPv4-mapped, NAT64 and 6to4 forms, a host that resolves to a private
address, and a redirect from a public host to each of them are all refused before any request
reaches them; the address checked is the address connected."""

from __future__ import annotations

import httpx
import pytest

from shvya_ingest.kb_fetch import FetchError, fetch_document
from tests.fakes.dns import FakeDNS

PUBLIC_IP = "93.184.216.34"
FORBIDDEN = [
    "http://127.0.0.1/page",
    "http://10.0.0.5/page",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/page",
    "http://[::ffff:127.0.0.1]/page",
    "http://[64:ff9b::7f00:1]/page",
    "http://[2002:7f00:1::1]/page",
    "http://0.0.0.0/page",
    "http://internal.example/page",
    "http://mixed.example/page",
]


class Web:
    """A transport standing in for the internet: the public host redirects where told."""

    def __init__(self, redirect_to: str | None = None) -> None:
        self.redirect_to = redirect_to
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if self.redirect_to is not None:
            return httpx.Response(302, headers={"Location": self.redirect_to})
        return httpx.Response(
            200, text="# Prices\n10 EUR", headers={"Content-Type": "text/markdown"}
        )


@pytest.fixture
async def dns(monkeypatch):
    fake = FakeDNS().install(monkeypatch)
    fake.table.update(
        {
            "public.example": [PUBLIC_IP],
            "internal.example": ["10.1.2.3"],
            "mixed.example": [PUBLIC_IP, "127.0.0.1"],
        }
    )
    return fake


async def fetch(web: Web, url: str) -> object:
    async with httpx.AsyncClient(transport=httpx.MockTransport(web)) as client:
        return await fetch_document(
            client, url, max_bytes=10_000, deadline_seconds=5, allow_private=False
        )


@pytest.mark.parametrize("url", FORBIDDEN)
async def test_a_private_target_is_refused_before_any_request(dns, url):
    """A URL whose host is, or resolves to, a non-public address is refused with a 422 that
    names why, and nothing is requested."""
    web = Web()
    with pytest.raises(FetchError) as refused:
        await fetch(web, url)
    assert refused.value.status == 422 and "refused" in str(refused.value)
    assert web.seen == []


@pytest.mark.parametrize("url", FORBIDDEN)
async def test_a_redirect_to_a_private_target_is_refused(dns, url):
    """A public page that redirects to a forbidden address is followed no further."""
    web = Web(redirect_to=url)
    with pytest.raises(FetchError, match="refused"):
        await fetch(web, "http://public.example/start")
    assert [r.url.host for r in web.seen] == [PUBLIC_IP]


async def test_the_request_goes_to_the_checked_address_with_the_hosts_name(dns):
    """The fetch connects to the address the guard approved, naming the host in `Host`, so a
    second DNS answer can never send it elsewhere."""
    web = Web()
    document = await fetch(web, "http://public.example/prices")
    assert [str(r.url) for r in web.seen] == [f"http://{PUBLIC_IP}/prices"]
    assert web.seen[0].headers["host"] == "public.example"
    assert dns.calls == ["public.example"]
    assert document.text.startswith("# Prices")  # type: ignore[attr-defined]
