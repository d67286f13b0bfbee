"""The WhatsApp Cloud API webhook: Meta's verification handshake and its signed notifications.

GET answers `hub.mode=subscribe` with `hub.challenge` when `hub.verify_token` matches
WHATSAPP_VERIFY_TOKEN. POST checks `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with
WHATSAPP_APP_SECRET, compared in constant time) before parsing anything, then files every
inbound message through the same path as /inbound-message (one statement per company) and
applies every delivery status (one statement for all), and answers 200 once that is committed.
Duplicates, which Meta sends for days, change nothing the second time.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Annotated, Final

import structlog
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError

from shvya_ingest.api import Ingest, IngestDep
from shvya_ingest.meta_payload import (
    MetaWebhook,
    StatusReport,
    message_meta,
    message_text,
    status_report,
    unix_time,
)
from shvya_ingest.phone import AddressError, normalise_phone
from shvya_ingest.repository import InboundRow
from shvya_ingest.statuses import apply_statuses

log = structlog.get_logger(__name__)

CHANNEL: Final = "whatsapp_cloud"
SIGNATURE_HEADER = "x-hub-signature-256"

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def signature_matches(secret: bytes, body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().lower().encode())


@router.get("/whatsapp", response_class=PlainTextResponse)
async def whatsapp_verify(
    ingest: IngestDep,
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str | None, Query(alias="hub.challenge")] = None,
) -> PlainTextResponse:
    """Meta's subscription handshake: echo `hub.challenge` when the verify token matches."""
    expected = ingest.settings.whatsapp_verify_token
    if expected is None:
        raise HTTPException(403, "webhook verification is off: WHATSAPP_VERIFY_TOKEN is not set")
    given = (token or "").encode()
    if mode != "subscribe" or not hmac.compare_digest(given, expected.get_secret_value().encode()):
        log.warning("whatsapp_verify_refused", mode=mode)
        raise HTTPException(403, "hub.mode must be 'subscribe' and hub.verify_token must match")
    return PlainTextResponse(challenge or "")


@router.post("/whatsapp")
async def whatsapp_notify(request: Request, ingest: IngestDep) -> dict[str, object]:
    """Signed notifications: inbound messages are filed, delivery statuses applied."""
    secret = ingest.settings.whatsapp_app_secret
    if secret is None:
        raise HTTPException(503, "WhatsApp webhook is not configured: set WHATSAPP_APP_SECRET")
    header = request.headers.get(SIGNATURE_HEADER)
    if not header:
        raise HTTPException(401, "missing X-Hub-Signature-256 header")
    body = await request.body()
    if not signature_matches(secret.get_secret_value().encode(), body, header):
        log.warning("whatsapp_signature_mismatch", bytes=len(body))
        raise HTTPException(403, "X-Hub-Signature-256 does not match the body")
    try:
        payload = MetaWebhook.model_validate_json(body)
    except ValidationError as err:
        raise HTTPException(400, f"not a WhatsApp webhook payload: {err.errors()[:3]}") from err
    if payload.object != "whatsapp_business_account":
        log.info("whatsapp_webhook_ignored", object=payload.object)
        return {"status": "ignored"}
    return await handle_notification(ingest, payload)


async def handle_notification(ingest: Ingest, payload: MetaWebhook) -> dict[str, object]:
    received_at = datetime.now(UTC)
    by_company: dict[uuid.UUID | None, list[InboundRow]] = defaultdict(list)
    reports: list[StatusReport] = []
    skipped = 0
    for entry in payload.entry:
        for change in entry.changes:
            value = change.value
            if change.field not in (None, "messages") or value is None:
                continue
            phone_number_id = value.metadata.phone_number_id if value.metadata else None
            names = {c.wa_id: c.profile.name for c in value.contacts if c.wa_id and c.profile}
            company_id = None
            if value.messages and phone_number_id:
                company_id = await ingest.inbound.company_for(CHANNEL, phone_number_id)
            for message in value.messages:
                text = message_text(message)
                try:
                    address = normalise_phone("+" + message.sender.lstrip("+"))
                except AddressError:
                    text = None
                if text is None:
                    skipped += 1
                    continue
                by_company[company_id].append(
                    InboundRow(
                        address=address,
                        text=text,
                        contact_name=names.get(message.sender),
                        provider_message_id=message.id,
                        received_at=unix_time(message.timestamp) or received_at,
                        meta=message_meta(message, phone_number_id),
                    )
                )
            for status in value.statuses:
                report = status_report(status, received_at)
                if report is not None:
                    reports.append(report)
    filed = duplicates = optouts = 0
    for company_id, rows in by_company.items():
        route = await ingest.route_for(company_id)
        results = await ingest.inbound.file(route, identity="phone", channel=CHANNEL, rows=rows)
        filed += sum(r.created for r in results)
        duplicates += sum(not r.created for r in results)
        optouts += sum(r.created and r.optout for r in results)
    new_statuses = 0
    if reports:
        async with ingest.plat.pool.acquire(timeout=5) as conn, conn.transaction():
            outcome = await apply_statuses(conn, CHANNEL, reports)
        new_statuses = outcome.new
        log.info(
            "whatsapp_statuses",
            received=outcome.received,
            new=outcome.new,
            pending=outcome.pending,
            messages=outcome.messages,
        )
    if skipped:
        log.info("whatsapp_messages_skipped", count=skipped)
    return {
        "status": "ok",
        "messages": filed,
        "duplicates": duplicates,
        "optouts": optouts,
        "skipped": skipped,
        "statuses": new_statuses,
    }
