"""Fetching a knowledge-base document from a URL, once, within limits.

One GET with httpx, redirects followed by hand (at most five) so that every hop is checked: only
http and https, and, unless KB_FETCH_ALLOW_PRIVATE is set, only hosts whose addresses are all
public, so an admin request cannot make ingest read internal services. The body is read as a
stream and abandoned past the size limit; the whole fetch has one deadline. HTML, markdown and
plain text are accepted; anything else is refused with 415.

The address check resolves the host before httpx connects, which resolves it again: a DNS answer
that changes in between (rebinding) is not caught. Keep KB_FETCH_ALLOW_PRIVATE off on hosts that
can reach sensitive internal services, and put an egress proxy in front when that matters.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from shvya_common.knowledge.chunking import Format

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
        target = httpx.URL(current)
        if target.scheme not in ("http", "https") or not target.host:
            raise FetchError(422, f"only http and https URLs can be fetched, not {current}")
        if not allow_private:
            await _require_public(target.host, target.port or _default_port(target.scheme))
        try:
            async with client.stream(
                "GET", target, headers={"Accept": ACCEPT}, follow_redirects=False
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


async def _require_public(host: str, port: int) -> None:
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as err:
            raise FetchError(422, f"cannot resolve {host}: {err}") from err
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        if not address.is_global:
            raise FetchError(
                422,
                f"{host} resolves to {address}, a private or local address; set "
                "KB_FETCH_ALLOW_PRIVATE=true to allow it",
            )
