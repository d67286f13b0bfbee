"""The WhatsApp Cloud API channel: text and template messages through Meta's Graph API.

A send is one `POST {base}/{version}/{phone_number_id}/messages` with the bearer token; the
answer's `messages[0].id` (the wamid) becomes the outbound message's provider id, which delivery
statuses from the webhook later refer to. Graph errors are classified by `error.code`:

    130429, 131056, 80007, 4, 131000   rate limits and Meta-side failures  → RetryableError
    (and 1, 2, 131016, 133004, any 5xx or 429, network errors and timeouts)
    131047                              outside the 24 h window            → WindowClosedError
    131050                              recipient stopped marketing        → RecipientOptedOutError
    131026, 131051, 132000, 132001      undeliverable, bad type/template   → PermanentError
    190                                 access token expired or invalid    → ChannelPausedError
    368, 131048                         policy block, spam rate limit      → ChannelPausedError
    any other code                      4xx → PermanentError, 5xx/429 → RetryableError

One `httpx.AsyncClient` serves the whole process; the app opens and closes it. The token is
sent only in the Authorization header and never appears in a log line or an error.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

import httpx
import structlog
from pydantic import SecretStr

from shvya_common.contracts import SendParams
from shvya_common.errors import PermanentError, RetryableError, ShvyaError
from shvya_dispatch.channels.base import SendResult
from shvya_dispatch.channels.errors import (
    ChannelPausedError,
    RecipientOptedOutError,
    SendOutcomeUnknown,
    WindowClosedError,
)
from shvya_dispatch.templates import WHATSAPP_TEMPLATE_CHANNELS, RenderedTemplate, TemplateRenderer

log = structlog.get_logger(__name__)

WINDOW_CLOSED = 131047
OPTED_OUT_OF_MARKETING = 131050
TOKEN_INVALID = 190
# Meta's own advice for these is to wait and try again.
RETRYABLE_CODES = frozenset({4, 80007, 130429, 131000, 131056, 1, 2, 131016, 133004})
PERMANENT_CODES = frozenset({131026, 131051, 132000, 132001})
# The sender is blocked: policy violation (368) or too many messages flagged as spam (131048).
BLOCK_CODES = frozenset({368, 131048})

_REASON_CHARS = 500


def recipient(to: str) -> str:
    """The `to` Graph expects: the phone number's digits, country code first, no '+'."""
    digits = re.sub(r"[\s\-().]", "", to).removeprefix("+")
    if not re.fullmatch(r"\d{6,15}", digits):
        raise PermanentError(f"not a phone number WhatsApp can address: {to!r}")
    return digits


def text_payload(to: str, body: str) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": recipient(to),
        "type": "text",
        "text": {"body": body},
    }


def template_payload(to: str, template: RenderedTemplate) -> dict[str, Any]:
    content: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
    if template.parameters:
        content["components"] = [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": value} for value in template.parameters],
            }
        ]
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": recipient(to),
        "type": "template",
        "template": content,
    }


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


def classify_error(status: int, body: Any, *, block_pause_seconds: float) -> ShvyaError:
    """The error a failed Graph response maps to (see the table in the module docstring)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        reason = f"WhatsApp Cloud API answered HTTP {status} without a Graph error body"
        return RetryableError(reason) if status >= 500 or status == 429 else PermanentError(reason)
    try:
        code = int(error.get("code"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        code = -1
    reason = _describe(status, error)
    if code == WINDOW_CLOSED:
        return WindowClosedError(code, reason)
    if code in RETRYABLE_CODES:
        return RetryableError(reason)
    if code == OPTED_OUT_OF_MARKETING:
        return RecipientOptedOutError(code, reason)
    if code in PERMANENT_CODES:
        return PermanentError(reason)
    if code == TOKEN_INVALID:
        return ChannelPausedError(code, reason, pause_seconds=None, credential_bound=True)
    if code in BLOCK_CODES:
        return ChannelPausedError(
            code, reason, pause_seconds=block_pause_seconds, credential_bound=False
        )
    if status >= 500 or status == 429:
        return RetryableError(reason)
    return PermanentError(reason)


def parse_sent(body: Any) -> tuple[str, dict[str, Any]]:
    """The wamid and what else is worth keeping from a successful send's answer."""
    messages = body.get("messages") if isinstance(body, dict) else None
    first = messages[0] if isinstance(messages, list) and messages else None
    wamid = first.get("id") if isinstance(first, dict) else None
    if not isinstance(wamid, str) or not wamid:
        # Meta accepted something we cannot identify; sending again could duplicate it.
        raise PermanentError("WhatsApp Cloud API answered 2xx without messages[0].id")
    meta: dict[str, Any] = {}
    contacts = body.get("contacts")
    if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict):
        meta["wa_id"] = contacts[0].get("wa_id")
    if isinstance(first, dict) and first.get("message_status"):
        meta["message_status"] = first["message_status"]
    return wamid, meta


class WhatsAppCloudChannel:
    name = "whatsapp_cloud"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        phone_number_id: str,
        token: SecretStr,
        base_url: str,
        api_version: str,
        templates: TemplateRenderer,
        block_pause_seconds: float = 86400.0,
    ) -> None:
        self.client = client
        self.url = f"{base_url.rstrip('/')}/{api_version}/{phone_number_id}/messages"
        self._token = token
        self.templates = templates
        self.block_pause_seconds = block_pause_seconds
        # A pause after a refused token lasts until the channel runs with other credentials.
        self.credential_fingerprint = hashlib.sha256(
            f"{phone_number_id}:{token.get_secret_value()}".encode()
        ).hexdigest()[:16]

    async def send(
        self,
        to: str,
        text: str,
        *,
        template_id: uuid.UUID | None = None,
        message_id: uuid.UUID,
        params: SendParams | None = None,
    ) -> SendResult:
        meta: dict[str, Any] = {}
        if template_id is None:
            payload = text_payload(to, text)
        else:
            if params is None:
                raise PermanentError("template sends need the send request (company, lead)")
            template = await self.templates.render(
                params.company_id, params.lead_id, template_id, params.template_params
            )
            self._check_template(template)
            payload = template_payload(to, template)
            meta["template"] = {
                "id": str(template.id),
                "name": template.name,
                "language": template.language,
                "text": template.text,
            }
        body = await self._post(payload)
        wamid, extra = parse_sent(body)
        log.info("whatsapp_cloud_sent", message_id=str(message_id), kind=payload["type"])
        return SendResult(provider_message_id=wamid, status="sent", meta={**meta, **extra})

    @staticmethod
    def _check_template(template: RenderedTemplate) -> None:
        if template.channel not in WHATSAPP_TEMPLATE_CHANNELS:
            raise PermanentError(
                f"template {template.name!r} is for {template.channel!r}, not WhatsApp"
            )
        if template.status != "approved":
            raise PermanentError(
                f"template {template.name!r} is {template.status!r}; WhatsApp sends only "
                "approved templates"
            )

    async def _post(self, payload: dict[str, Any]) -> Any:
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        try:
            response = await self.client.post(self.url, json=payload, headers=headers)
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
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success:
            return body
        raise classify_error(
            response.status_code, body, block_pause_seconds=self.block_pause_seconds
        )
