"""The WhatsApp Cloud API webhook: Meta's verification handshake and its signed notifications.

GET answers `hub.mode=subscribe` with `hub.challenge` when `hub.verify_token` matches
WHATSAPP_VERIFY_TOKEN. POST checks `X-Hub-Signature-256` (HMAC-SHA256 of the raw body, compared
in constant time) before acting on anything: the body is read as JSON only to learn which
business numbers it names, and the secret it must be signed with is the app secret of the
channel account that owns them, else WHATSAPP_APP_SECRET (`whatsapp_accounts`). Changes for a
number no company owns are recorded and skipped. Only a bad signature (401/403), missing
secrets (503) or a body that is not a JSON object (400) is refused: every item of a
notification is then handled on its own (`whatsapp_inbound`), in its owner's company, and the
answer is 200 once that is committed. Duplicates, which Meta sends for days, change nothing the
second time.
"""

from __future__ import annotations

import hmac
import json
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from shvya_ingest import examples as ex
from shvya_ingest.api import IngestDep
from shvya_ingest.whatsapp_accounts import (
    SignatureRefused,
    record_skipped,
    signature_matches,
    split,
)
from shvya_ingest.whatsapp_inbound import handle_notification

log = structlog.get_logger(__name__)

__all__ = ["router", "signature_matches", "without_nul"]

SIGNATURE_HEADER = "x-hub-signature-256"

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


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
    mode: Annotated[
        str | None, Query(alias="hub.mode", description="`subscribe`; anything else is refused.")
    ] = None,
    token: Annotated[
        str | None,
        Query(alias="hub.verify_token", description="Must equal WHATSAPP_VERIFY_TOKEN."),
    ] = None,
    challenge: Annotated[
        str | None,
        Query(alias="hub.challenge", description="Meta's random value, echoed back as the body."),
    ] = None,
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


@router.post(
    "/whatsapp",
    responses=ex.answer(
        {
            "status": "ok",
            "messages": 1,
            "duplicates": 0,
            "optouts": 0,
            "statuses": 2,
            "changes": 0,
            "skipped": 0,
            "failed": 0,
        }
    ),
)
async def whatsapp_notify(request: Request, ingest: IngestDep) -> dict[str, object]:
    """Signed notifications: messages filed, edits/deletions/reactions applied, statuses and
    their policy, identity and preference changes, template status updates; each into the
    company that owns the business number, checked against that account's app secret."""
    header = request.headers.get(SIGNATURE_HEADER)
    if not header:
        raise HTTPException(401, "missing X-Hub-Signature-256 header")
    body = await request.body()
    try:
        payload = json.loads(body)
    except ValueError as err:
        raise HTTPException(400, f"not JSON: {err}") from err
    if not isinstance(payload, dict):
        raise HTTPException(400, "a WhatsApp webhook payload is a JSON object")
    try:
        routed = await split(ingest.whatsapp_owners, payload, body, header)
    except SignatureRefused as err:
        if err.status == 403:
            log.warning("whatsapp_signature_mismatch", bytes=len(body))
        raise HTTPException(err.status, err.reason) from err
    await record_skipped(ingest.plat.pool, routed.skipped)
    payload = without_nul(routed.payload)
    if payload.get("object") != "whatsapp_business_account":
        log.info("whatsapp_webhook_ignored", object=str(payload.get("object"))[:100])
        return {"status": "ignored"}
    return await handle_notification(ingest, payload, routed)
