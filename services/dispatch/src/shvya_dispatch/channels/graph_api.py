"""Meta's Graph API over one HTTP client: sends, reads (media, template lists) and media
downloads, with Graph errors turned into what dispatch does next.

Errors are classified by the one table of Graph codes (shvya_common.whatsapp.graph_errors),
honouring Graph's `is_transient`:

    retry       → RetryableError            (job schedule)
    defer       → DeferJob                  (no attempt spent)
    pause       → ChannelPausedError        (pause the company's channel, defer the send)
    suppress    → RecipientOptedOutError    (suppress the recipient, dead-letter)
    permanent   → PermanentError, or WindowClosedError (131047: fallback template or hold),
                  or UndeliverableError (131026 and friends: flag the lead)

The token is sent only in the Authorization header, to Graph and to the media host Graph names,
and never appears in a log line or an error.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr

from shvya_common.errors import DeferJob, PermanentError, RetryableError, ShvyaError
from shvya_common.whatsapp.graph_errors import decide
from shvya_dispatch.channels.errors import (
    ChannelPausedError,
    RecipientOptedOutError,
    SendOutcomeUnknown,
    UndeliverableError,
    WindowClosedError,
)

_REASON_CHARS = 500


class MediaTooLarge(PermanentError):
    """A download grew past the size limit and was abandoned."""


def _describe(status: int, error: dict[str, Any]) -> str:
    code = error.get("code")
    message = str(error.get("message") or "").strip()
    data = error.get("error_data")
    details = str(data.get("details") or "").strip() if isinstance(data, dict) else ""
    reason = f"WhatsApp Cloud API error {code} (HTTP {status}): {message}"
    if details and details != message:
        reason += f" - {details}"
    if error.get("fbtrace_id"):
        reason += f" [fbtrace_id {error['fbtrace_id']}]"
    return reason[:_REASON_CHARS]


def classify_error(
    status: int,
    body: Any,
    *,
    block_pause_seconds: float,
    account_pause_seconds: float = 3600.0,
) -> ShvyaError:
    """The error a failed Graph response maps to (see the module docstring)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        reason = f"WhatsApp Cloud API answered HTTP {status} without a Graph error body"
        return RetryableError(reason) if status >= 500 or status == 429 else PermanentError(reason)
    try:
        code = int(error.get("code"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        code = -1
    transient = error.get("is_transient")
    decision = decide(
        code, http_status=status, is_transient=transient if isinstance(transient, bool) else None
    )
    reason = _describe(status, error)
    entry = decision.entry
    if decision.action == "retry":
        return RetryableError(reason)
    if decision.action == "defer":
        seconds = entry.defer_seconds if entry and entry.defer_seconds else 300.0
        return DeferJob(datetime.now(UTC) + timedelta(seconds=seconds), reason)
    if decision.action == "pause":
        kind = entry.pause if entry else "account"
        if kind == "credentials":
            return ChannelPausedError(code, reason, pause_seconds=None, credential_bound=True)
        seconds = block_pause_seconds if kind == "block" else account_pause_seconds
        return ChannelPausedError(code, reason, pause_seconds=seconds, credential_bound=False)
    if decision.action == "suppress":
        return RecipientOptedOutError(code, reason)
    if decision.effect == "fallback_template":
        return WindowClosedError(code, reason)
    if decision.effect == "flag_undeliverable":
        return UndeliverableError(code, reason)
    return PermanentError(reason)


class GraphApi:
    """Graph calls with one account's token."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        token: SecretStr,
        base_url: str,
        api_version: str,
        block_pause_seconds: float = 86400.0,
        account_pause_seconds: float = 3600.0,
    ) -> None:
        self.client = client
        self.base = f"{base_url.rstrip('/')}/{api_version}"
        self._token = token
        self.block_pause_seconds = block_pause_seconds
        self.account_pause_seconds = account_pause_seconds

    def fingerprint(self, salt: str) -> str:
        """A one-way fingerprint of these credentials (a pause bound to them ends with them)."""
        return hashlib.sha256(f"{salt}:{self._token.get_secret_value()}".encode()).hexdigest()[:16]

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token.get_secret_value()}"}

    def _raise_for(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success:
            return body
        raise classify_error(
            response.status_code,
            body,
            block_pause_seconds=self.block_pause_seconds,
            account_pause_seconds=self.account_pause_seconds,
        )

    async def post(self, path: str, payload: dict[str, Any]) -> Any:
        """POST a message; an answer lost after the request left is never retried."""
        try:
            response = await self.client.post(
                f"{self.base}/{path}", json=payload, headers=self._auth
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
            # The request never left: safe to retry on the job schedule.
            raise RetryableError(
                f"WhatsApp Cloud API unreachable ({type(err).__name__}: {err})"
            ) from err
        except httpx.TransportError as err:
            # Sent, but the answer was lost (read timeout, dropped connection): Meta may have
            # accepted it and has no idempotency key, so a retry could deliver it twice.
            raise SendOutcomeUnknown(
                f"WhatsApp Cloud API gave no answer after the request was sent "
                f"({type(err).__name__}); not repeated"
            ) from err
        return self._raise_for(response)

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a Graph object (reads are safe to retry)."""
        try:
            response = await self.client.get(
                f"{self.base}/{path}", params=params, headers=self._auth
            )
        except httpx.TransportError as err:
            raise RetryableError(f"Graph API unreachable ({type(err).__name__})") from err
        return self._raise_for(response)

    async def get_url(self, url: str) -> Any:
        """GET a URL Graph gave us (a next page), with the token."""
        try:
            response = await self.client.get(url, headers=self._auth)
        except httpx.TransportError as err:
            raise RetryableError(f"Graph API unreachable ({type(err).__name__})") from err
        return self._raise_for(response)

    async def download(self, url: str, max_bytes: int) -> tuple[bytes, str | None]:
        """The file at a Graph media URL (it needs the token too), read up to `max_bytes`."""
        try:
            async with self.client.stream("GET", url, headers=self._auth) as response:
                if not response.is_success:
                    await response.aread()
                    self._raise_for(response)
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise MediaTooLarge(f"media is {declared} bytes, more than {max_bytes}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise MediaTooLarge(f"media is more than {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks), response.headers.get("content-type")
        except httpx.TransportError as err:
            raise RetryableError(f"media download failed ({type(err).__name__})") from err
