"""The WhatsApp Cloud API channel: text and template messages through Meta's Graph API.

A send is one `POST {base}/{version}/{phone_number_id}/messages` with the bearer token. The
recipient is addressed by phone number (`to`, digits without '+') or, for a username user who
shares none, by business-scoped user id (`recipient`). A send may quote the message it answers
(`context.message_id`). Templates carry their header, body and button parameters, checked
against the template's definition first (templates.py); a paused template waits, one that is
not approved is never sent. The answer's `messages[0].id` (the wamid) becomes the outbound
message's provider id, which delivery statuses from the webhook later refer to. Graph errors are
classified by the one table of codes (graph_api.py).

One `httpx.AsyncClient` serves the whole process; the app opens and closes it.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from shvya_common.contracts import SendParams
from shvya_common.errors import DeferJob, PermanentError
from shvya_common.whatsapp.ids import is_bsuid
from shvya_dispatch.channels.base import SendResult
from shvya_dispatch.channels.graph_api import GraphApi, classify_error
from shvya_dispatch.templates import WHATSAPP_TEMPLATE_CHANNELS, RenderedTemplate, TemplateRenderer

__all__ = ["WhatsAppCloudChannel", "classify_error", "parse_sent", "template_payload"]

log = structlog.get_logger(__name__)

# A paused template (low quality) resumes after 3 or 6 hours; its sends look again this often.
PAUSED_TEMPLATE_RECHECK_SECONDS = 3600.0


def recipient(to: str) -> str:
    """The `to` Graph expects: the phone number's digits, country code first, no '+'."""
    digits = re.sub(r"[\s\-().]", "", to).removeprefix("+")
    if not re.fullmatch(r"\d{6,15}", digits):
        raise PermanentError(f"not a phone number WhatsApp can address: {to!r}")
    return digits


def addressed(to: str) -> dict[str, str]:
    """`to` for a phone number, `recipient` for a business-scoped user id."""
    if is_bsuid(to.strip()):
        return {"recipient": to.strip()}
    return {"to": recipient(to)}


def _envelope(to: str, kind: str, context: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        **addressed(to),
        "type": kind,
    }
    if context:
        payload["context"] = {"message_id": context}
    return payload


def text_payload(to: str, body: str, context: str | None = None) -> dict[str, Any]:
    return {**_envelope(to, "text", context), "text": {"body": body}}


def template_payload(
    to: str, template: RenderedTemplate, context: str | None = None
) -> dict[str, Any]:
    content: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
    if template.components is not None:
        components = list(template.components)
    elif template.parameters:
        parameters = [{"type": "text", "text": value} for value in template.parameters]
        components = [{"type": "body", "parameters": parameters}]
    else:
        components = []
    if components:
        content["components"] = components
    return {**_envelope(to, "template", context), "template": content}


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
        for key in ("wa_id", "user_id"):
            if contacts[0].get(key):
                meta[key] = contacts[0][key]
    if isinstance(first, dict) and first.get("message_status"):
        meta["message_status"] = first["message_status"]
    return wamid, meta


class WhatsAppCloudChannel:
    name = "whatsapp_cloud"

    def __init__(
        self, graph: GraphApi, *, phone_number_id: str, templates: TemplateRenderer
    ) -> None:
        self.graph = graph
        self.path = f"{phone_number_id}/messages"
        self.templates = templates
        # A pause after a refused token lasts until the channel runs with other credentials.
        self.credential_fingerprint = graph.fingerprint(phone_number_id)

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
        context = params.context_message_id if params is not None else None
        if template_id is None:
            payload = text_payload(to, text, context)
        else:
            if params is None:
                raise PermanentError("template sends need the send request (company, lead)")
            template = await self.templates.render(
                params.company_id, params.lead_id, template_id, params.template_params
            )
            self._check_template(template)
            payload = template_payload(to, template, context)
            meta["template"] = {
                "id": str(template.id),
                "name": template.name,
                "language": template.language,
                "text": template.text,
            }
        body = await self.graph.post(self.path, payload)
        wamid, extra = parse_sent(body)
        log.info("whatsapp_cloud_sent", message_id=str(message_id), kind=payload["type"])
        return SendResult(provider_message_id=wamid, status="sent", meta={**meta, **extra})

    @staticmethod
    def _check_template(template: RenderedTemplate) -> None:
        if template.channel not in WHATSAPP_TEMPLATE_CHANNELS:
            raise PermanentError(
                f"template {template.name!r} is for {template.channel!r}, not WhatsApp"
            )
        if template.status == "paused":
            raise DeferJob(
                datetime.now(UTC) + timedelta(seconds=PAUSED_TEMPLATE_RECHECK_SECONDS),
                f"template {template.name!r} is paused by Meta (low quality); waiting for it",
            )
        if template.status != "approved":
            raise PermanentError(
                f"template {template.name!r} is {template.status!r}; WhatsApp sends only "
                "approved templates"
            )
