"""Fetching a knowledge-base document from a URL, once, within limits.

One GET with httpx, redirects followed by hand (at most five) so that every hop is checked: only
http and https, and, unless KB_FETCH_ALLOW_PRIVATE is set, only hosts whose addresses are all
public (the SSRF guard of `shvya_common.webhooks.netguard`: loopback, private, link-local,
metadata, IPv4-mapped, NAT64 and 6to4 forms are refused), so an admin request cannot make
ingest read internal services. The address checked is the address connected: each hop's host is
resolved once and the request goes to a checked IP itself, with the `Host` header and the TLS
server name set to the host, so a DNS answer that changes between check and connect (rebinding)
cannot slip through. The body is read as a stream and abandoned past the size limit; the whole
fetch has one deadline. HTML, markdown and plain text are accepted; anything else is 415.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from shvya_common.knowledge.chunking import Format
from shvya_common.webhooks.netguard import AddressRefused, resolve_public

MAX_REDIRECTS = 5
ACCEPT = "text/html, application/xhtml+xml, text/markdown, text/plain;q=0.9, */*;q=0.1"
_FORMATS: dict[str, Format] = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/plain": "text",
}


class FetchError(Exception):
    """A URL that could not be turned into a document; `status` is the HTTP answer to give."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class FetchedDocument:
    url: str
    content_type: str
    format: Format
    text: str


async def fetch_document(
    client: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int,
    deadline_seconds: float,
    allow_private: bool,
) -> FetchedDocument:
    """GET `url` (following redirects) and decode its body as a document."""
    try:
        async with asyncio.timeout(deadline_seconds):
            return await _fetch(client, url, max_bytes=max_bytes, allow_private=allow_private)
    except TimeoutError as err:
        raise FetchError(422, f"fetching {url} took longer than {deadline_seconds:g}s") from err


async def _fetch(
    client: httpx.AsyncClient, url: str, *, max_bytes: int, allow_private: bool
) -> FetchedDocument:
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            target = httpx.URL(current)
        except httpx.InvalidURL as err:
            raise FetchError(422, f"not a valid URL: {current}") from err
        if target.scheme not in ("http", "https") or not target.host:
            raise FetchError(422, f"only http and https URLs can be fetched, not {current}")
        host = target.raw_host.decode("ascii").strip("[]")
        port = target.port or _default_port(target.scheme)
        try:
            addresses = await resolve_public(host, port, allow_private=allow_private)
        except AddressRefused as err:
            raise FetchError(
                422, f"{current} is refused: {err}; KB_FETCH_ALLOW_PRIVATE=true allows it"
            ) from err
        except OSError as err:
            raise FetchError(422, f"cannot resolve {host}: {err}") from err
        pinned = target.copy_with(host=str(addresses[0]), username=None, password=None)
        headers = {"Accept": ACCEPT, "Host": target.netloc.decode("ascii")}
        extensions = {"sni_hostname": host} if target.scheme == "https" and not _is_ip(host) else {}
        try:
            async with client.stream(
                "GET", pinned, headers=headers, follow_redirects=False, extensions=extensions
            ) as response:
                if response.is_redirect and "location" in response.headers:
                    current = urljoin(current, response.headers["location"])
                    continue
                return await _read(response, current, max_bytes)
        except httpx.HTTPError as err:
            raise FetchError(
                422, f"could not fetch {current}: {type(err).__name__}: {err}"
            ) from err
    raise FetchError(422, f"{url} redirects more than {MAX_REDIRECTS} times")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _read(response: httpx.Response, url: str, max_bytes: int) -> FetchedDocument:
    if response.status_code >= 400:
        raise FetchError(422, f"{url} answered HTTP {response.status_code}")
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = _FORMATS.get(content_type)
    if fmt is None:
        if not content_type.startswith("text/"):
            raise FetchError(
                415,
                f"{url} is {content_type or 'of no declared type'}; "
                "only HTML, markdown and plain text can be loaded",
            )
        fmt = "text"
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(413, f"{url} is {declared} bytes; the limit is {max_bytes}")
    body = bytearray()
    async for part in response.aiter_bytes():
        body += part
        if len(body) > max_bytes:
            raise FetchError(413, f"{url} is larger than the limit of {max_bytes} bytes")
    encoding = response.charset_encoding or "utf-8"
    try:
        text = bytes(body).decode(encoding, errors="replace")
    except LookupError:  # a charset Python does not know
        text = bytes(body).decode("utf-8", errors="replace")
    return FetchedDocument(url=url, content_type=content_type, format=fmt, text=text)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80
