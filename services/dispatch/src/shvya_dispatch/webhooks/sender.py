"""One webhook POST behind the SSRF guard: the address checked is the address connected.

The host is resolved once (`shvya_common.webhooks.netguard.resolve_public`); every address it
resolves to must be public, or nothing is sent. The request then goes to one of those addresses
itself, as an IP in the URL, with the `Host` header and, for https, the TLS server name (httpx's
`sni_hostname` extension, which the certificate is also verified against) set to the original
host, so DNS is never asked again between the check and the connection (no rebinding gap).
Because the URL names an IP, connections are not kept alive: a pooled connection to an IP could
otherwise be reused for another host on that IP with the first host's TLS session.

Redirects are never followed: a 3xx is a failed attempt, whatever its target. The whole attempt
has one deadline (`WEBHOOK_TIMEOUT_SECONDS`), the response body is read raw (never
decompressed) up to `WEBHOOK_MAX_RESPONSE_BYTES` and the rest dropped, and proxies from the
environment are ignored (a proxy would connect on its own). The outcome is an `AttemptRecord`,
never an exception: a failure is data for the delivery log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Mapping

import httpx

from shvya_common.webhooks.netguard import AddressRefused, IPAddress, resolve_public
from shvya_common.webhooks.repository import AttemptRecord

USER_AGENT = "SHVYA-Webhooks/1.0"
KEPT_RESPONSE_CHARS = 1000


def webhook_client(timeout: float, *, verify: object = True) -> httpx.AsyncClient:
    """The HTTP client deliveries go through (one per dispatch process, closed with it)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=0),
        follow_redirects=False,
        trust_env=False,
        verify=verify,  # type: ignore[arg-type]
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )


class WebhookSender:
    """POSTs one signed body to one URL, within the guard's and the settings' limits."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        timeout: float,
        max_response_bytes: int,
        allow_private: bool,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.allow_private = allow_private

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> AttemptRecord:
        started = time.perf_counter()
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as err:
            return _failed(f"not a valid URL: {err}")
        if target.scheme not in ("http", "https") or not target.host:
            return _failed("only http and https URLs can receive webhooks")
        host = target.raw_host.decode("ascii").strip("[]")
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            async with asyncio.timeout(self.timeout):
                addresses = await resolve_public(host, port, allow_private=self.allow_private)
                return await self._post_to(target, host, addresses, body, headers, started)
        except AddressRefused as err:
            return _failed(f"refused by the SSRF guard: {err}")
        except TimeoutError:
            return _failed(f"no answer within {self.timeout:g}s", latency_ms=_since(started))

    async def _post_to(
        self,
        target: httpx.URL,
        host: str,
        addresses: list[IPAddress],
        body: bytes,
        headers: Mapping[str, str],
        started: float,
    ) -> AttemptRecord:
        """Try the checked addresses in the resolver's order until one connects."""
        request_headers = {
            **headers,
            "Host": target.netloc.decode("ascii"),
            "Content-Type": "application/json",
        }
        extensions = {"sni_hostname": host} if target.scheme == "https" and not _is_ip(host) else {}
        last = "no address to connect to"
        for address in addresses:
            pinned = target.copy_with(host=str(address), username=None, password=None)
            try:
                async with self.client.stream(
                    "POST", pinned, content=body, headers=request_headers, extensions=extensions
                ) as response:
                    latency = _since(started)
                    excerpt = await self._read(response)
                    return _outcome(response, latency, str(address), excerpt)
            except httpx.ConnectError as err:
                last = f"cannot connect to {address}: {err or type(err).__name__}"
                continue
            except httpx.TimeoutException as err:
                return _failed(
                    f"timed out ({type(err).__name__})",
                    latency_ms=_since(started),
                    address=str(address),
                )
            except httpx.HTTPError as err:
                return _failed(
                    f"{type(err).__name__}: {err}"[:500],
                    latency_ms=_since(started),
                    address=str(address),
                )
        return _failed(last, latency_ms=_since(started))

    async def _read(self, response: httpx.Response) -> str:
        """At most `max_response_bytes` of the raw body (the connection closes after)."""
        if self.max_response_bytes == 0:
            return ""
        kept = bytearray()
        async for chunk in response.aiter_raw():
            kept += chunk
            if len(kept) >= self.max_response_bytes:
                break
        return bytes(kept[: self.max_response_bytes]).decode("utf-8", errors="replace")[
            :KEPT_RESPONSE_CHARS
        ]


def _outcome(response: httpx.Response, latency: float, address: str, excerpt: str) -> AttemptRecord:
    code = response.status_code
    if 200 <= code < 300:
        return AttemptRecord(True, code, latency, None, address, excerpt or None)
    if 300 <= code < 400:
        where = response.headers.get("location", "nowhere")[:300]
        error = f"HTTP {code}: redirect to {where} not followed (webhooks never follow redirects)"
    else:
        error = f"HTTP {code}"
    return AttemptRecord(False, code, latency, error, address, excerpt or None)


def _failed(
    error: str, *, latency_ms: float | None = None, address: str | None = None
) -> AttemptRecord:
    return AttemptRecord(False, None, latency_ms, error, address, None)


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
