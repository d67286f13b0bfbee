"""The WhatsApp Cloud API webhook: Meta's verification handshake and its signed notifications.

GET answers `hub.mode=subscribe` with `hub.challenge` when `hub.verify_token` matches
WHATSAPP_VERIFY_TOKEN. POST checks `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with
WHATSAPP_APP_SECRET, compared in constant time) before parsing anything. Only a bad signature
(401/403) or a body that is not a JSON object (400) is refused: every item of a notification is
then handled on its own (`whatsapp_inbound`), and the answer is 200 once that is committed.
Duplicates, which Meta sends for days, change nothing the second time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from shvya_ingest.api import IngestDep
from shvya_ingest.whatsapp_inbound import handle_notification

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "x-hub-signature-256"

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def signature_matches(secret: bytes, body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().lower().encode())


def without_nul(value: Any) -> Any:
    """The payload with NUL characters dropped: PostgreSQL stores none, in text or jsonb, and
    one would fail the statement that files the whole batch."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    return value


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
    """Signed notifications: messages filed, edits/deletions/reactions applied, statuses and
    their policy, identity and preference changes, template status updates."""
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
        payload = json.loads(body)
    except ValueError as err:
        raise HTTPException(400, f"not JSON: {err}") from err
    if not isinstance(payload, dict):
        raise HTTPException(400, "a WhatsApp webhook payload is a JSON object")
    payload = without_nul(payload)
    if payload.get("object") != "whatsapp_business_account":
        log.info("whatsapp_webhook_ignored", object=str(payload.get("object"))[:100])
        return {"status": "ignored"}
    return await handle_notification(ingest, payload)
