"""Inbound email from the parsing services businesses already use, each verified as its provider
signs it, then filed like every other email (`mail.file_email`):

- **SendGrid Inbound Parse** `POST /webhooks/email/sendgrid` (multipart form, parsed or raw
  MIME in `email`): the Parse webhook's security policy signs `timestamp + raw body` with ECDSA
  P-256 / SHA-256; the base64 DER signature is in `X-Twilio-Email-Event-Webhook-Signature`, the
  timestamp in `X-Twilio-Email-Event-Webhook-Timestamp`, checked against the policy's public
  key (SENDGRID_INBOUND_PUBLIC_KEY).
- **Mailgun routes** `POST /webhooks/email/mailgun` (a `forward()` action; a URL ending in
  `mime` gets `body-mime`): `signature` is the hex HMAC-SHA256 of `timestamp + token` under the
  webhook signing key (MAILGUN_WEBHOOK_SIGNING_KEY); a token is accepted once.
- **Postmark inbound** `POST /webhooks/email/postmark` (JSON): Postmark signs nothing; its
  documented protection is HTTP basic auth in the webhook URL (POSTMARK_INBOUND_USERNAME and
  _PASSWORD), compared in constant time.

Each refuses a request it cannot verify before reading it (401/403) and answers 503 while its
secret is unset. Mail that can never be filed (no sender or content, or raw MIME that cannot be
parsed) gets the answer that stops the provider's retries, with the reason in `detail`: 406 for
Mailgun, 403 for Postmark, 400 for SendGrid.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import OrderedDict
from email import policy
from email.parser import BytesParser, HeaderParser
from typing import Any

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData, UploadFile

from shvya_ingest import examples as ex
from shvya_ingest.api import Ingest, IngestDep
from shvya_ingest.mail import (
    Attachment,
    EmailError,
    InboundEmail,
    MailOutcome,
    file_email,
    first_message_id,
    message_ids,
    parse_address,
    parse_addresses,
    parse_mime,
)
from shvya_ingest.middleware import RouteLimits
from shvya_ingest.settings import IngestSettings

log = structlog.get_logger(__name__)

SENDGRID_SIGNATURE = "x-twilio-email-event-webhook-signature"
SENDGRID_TIMESTAMP = "x-twilio-email-event-webhook-timestamp"
MAX_FORM_FILES = 25
# Mailgun tokens seen recently, so a captured request cannot be replayed within the max age.
_SEEN_TOKENS_MAX = 10_000

router = APIRouter(prefix="/webhooks/email", tags=["webhooks"], responses=ex.answer(ex.EMAIL_FILED))
PATHS = re.compile(r"^/webhooks/email(?:/|$)")


def route_limits(settings: IngestSettings) -> RouteLimits:
    """Mail with attachments is larger than other webhooks' bodies."""
    return RouteLimits(
        PATHS, settings.email_webhook_max_bytes, settings.email_webhook_timeout_seconds
    )


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from SendGrid's base64 DER form or from PEM; ValueError otherwise."""
    value = text.strip()
    try:
        if value.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(value.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(value, validate=True))
    except (ValueError, binascii.Error, TypeError) as err:
        raise ValueError("not an EC public key in base64 DER or PEM") from err
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("SendGrid signs with ECDSA: the key must be an EC public key")
    return key


def sendgrid_signature_valid(
    key: ec.EllipticCurvePublicKey, body: bytes, timestamp: str, signature: str
) -> bool:
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
        key.verify(raw, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def mailgun_signature_valid(key: bytes, timestamp: str, token: str, signature: str) -> bool:
    expected = hmac.new(key, f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode())


def _fresh(timestamp: str, max_age: float) -> bool:
    try:
        return abs(time.time() - float(timestamp)) <= max_age
    except ValueError:
        return False


def _response(outcome: MailOutcome) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "ok", "kind": outcome.kind}
    if outcome.accepted is not None:
        body["message_id"] = str(outcome.accepted.message_id)
        body["job_id"] = str(outcome.accepted.job_id) if outcome.accepted.job_id else None
    if outcome.kind == "bounce":
        body["bounces"] = outcome.bounces_recorded
    return body


async def _file(ingest: Ingest, email: InboundEmail, refuse_status: int) -> JSONResponse:
    await ingest.limit_sender(None, email.sender)
    try:
        outcome = await file_email(ingest, email)
    except EmailError as err:
        log.info("email_webhook_unfileable", source=email.source, reason=str(err))
        return JSONResponse({"detail": str(err)}, status_code=refuse_status)
    return JSONResponse(_response(outcome))


async def _file_mime(
    ingest: Ingest,
    data: bytes,
    envelope_from: str | None,
    rcpt: list[str],
    source: str,
    refuse_status: int,
) -> JSONResponse:
    """File a raw MIME message; one that cannot be parsed gets `refuse_status` with the
    reason, like any mail that can never be filed."""
    try:
        email = parse_mime(data, envelope_from, rcpt, source=source)
    except EmailError as err:
        log.info("email_webhook_unparseable", source=source, reason=str(err))
        return JSONResponse({"detail": str(err)}, status_code=refuse_status)
    return await _file(ingest, email, refuse_status)


async def _mime_field(form: FormData, name: str, body: bytes, content_type: str) -> bytes | None:
    """The raw MIME message posted in form field `name`, as the bytes that were sent. Starlette
    hands a text field over decoded (UTF-8, else latin-1), which cannot tell which 8-bit bytes
    the message had, so a non-ASCII one is read again from the body."""
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        return await value.read()
    if value.isascii():
        return value.encode("ascii")
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    try:
        posted = BytesParser(policy=policy.HTTP).parsebytes(head + body)
        for part in posted.iter_parts():
            if part.get_param("name", header="content-disposition") == name:
                data = part.get_payload(decode=True)
                if isinstance(data, bytes):
                    return data
    except Exception as err:  # the text Starlette read is still there
        log.info("email_webhook_mime_field_unread", error=type(err).__name__)
    return value.encode("utf-8", "surrogateescape")


async def _files(form: FormData, names: list[str], info: dict[str, Any]) -> list[Attachment]:
    found: list[Attachment] = []
    for name in names[:MAX_FORM_FILES]:
        upload = form.get(name)
        if not isinstance(upload, UploadFile):
            continue
        entry = info.get(name)
        described: dict[str, Any] = entry if isinstance(entry, dict) else {}
        data = await upload.read()
        content_type = str(
            described.get("type") or upload.content_type or "application/octet-stream"
        )
        filename = described.get("filename") or upload.filename
        found.append(Attachment(filename, content_type.split(";")[0].strip().lower(), data))
    return found


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _json(value: str) -> Any:
    try:
        return json.loads(value) if value else None
    except ValueError:
        return None


# --- SendGrid Inbound Parse ---


@router.post("/sendgrid")
async def sendgrid_inbound(request: Request, ingest: IngestDep) -> JSONResponse:
    """SendGrid Inbound Parse: verify the signed request, then file the email."""
    configured = ingest.settings.sendgrid_inbound_public_key
    if configured is None:
        raise HTTPException(
            503, "SendGrid inbound is not configured: set SENDGRID_INBOUND_PUBLIC_KEY"
        )
    signature = request.headers.get(SENDGRID_SIGNATURE)
    timestamp = request.headers.get(SENDGRID_TIMESTAMP)
    if not signature or not timestamp:
        raise HTTPException(401, "missing the SendGrid signature and timestamp headers")
    body = await request.body()
    key = load_public_key(configured)
    if not sendgrid_signature_valid(key, body, timestamp, signature):
        log.warning("sendgrid_signature_mismatch", bytes=len(body))
        raise HTTPException(403, "the SendGrid signature does not match the body")
    if not _fresh(timestamp, ingest.settings.email_webhook_max_age_seconds):
        raise HTTPException(403, "the SendGrid timestamp is too old")
    form = await request.form(
        max_files=MAX_FORM_FILES + 5, max_part_size=ingest.settings.email_webhook_max_bytes
    )
    try:
        return await _sendgrid(ingest, form, body, request.headers.get("content-type", ""))
    finally:
        await form.close()


async def _sendgrid(ingest: Ingest, form: FormData, body: bytes, content_type: str) -> JSONResponse:
    envelope = _json(_text(form, "envelope")) or {}
    envelope_from = envelope.get("from") if isinstance(envelope, dict) else None
    envelope_to = envelope.get("to") if isinstance(envelope, dict) else None
    rcpt = [str(r) for r in envelope_to] if isinstance(envelope_to, list) else []
    data = await _mime_field(form, "email", body, content_type)
    if data is not None:
        return await _file_mime(ingest, data, envelope_from, rcpt, "sendgrid", 400)
    headers = HeaderParser(policy=policy.compat32).parsestr(_text(form, "headers"))
    try:
        sender, name = parse_address(_text(form, "from"))
    except EmailError as err:
        return JSONResponse({"detail": str(err)}, status_code=400)
    info = _json(_text(form, "attachment-info")) or {}
    count = int(_text(form, "attachments") or 0) if _text(form, "attachments").isdigit() else 0
    attachments = await _files(
        form,
        [f"attachment{i}" for i in range(1, count + 1)],
        info if isinstance(info, dict) else {},
    )
    email = InboundEmail(
        sender=sender,
        sender_name=name,
        to=[a for a, _ in parse_addresses(_text(form, "to"))] + rcpt,
        subject=_text(form, "subject") or None,
        text=_text(form, "text"),
        html=_text(form, "html") or None,
        message_id=str(headers.get("message-id") or "") or None,
        in_reply_to=first_message_id(str(headers.get("in-reply-to") or "")),
        references=message_ids(str(headers.get("references") or "")),
        headers=[(k, str(v)) for k, v in headers.items()],
        attachments=attachments,
        envelope_from=envelope_from,
        source="sendgrid",
    )
    return await _file(ingest, email, 400)


# --- Mailgun routes ---


class _SeenTokens:
    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, token: str) -> bool:
        if token in self._seen:
            return False
        self._seen[token] = time.monotonic()
        while len(self._seen) > _SEEN_TOKENS_MAX:
            self._seen.popitem(last=False)
        return True


_MAILGUN_TOKENS = _SeenTokens()


@router.post("/mailgun")
@router.post("/mailgun/mime")
async def mailgun_inbound(request: Request, ingest: IngestDep) -> JSONResponse:
    """Mailgun route forward (parsed fields, or raw MIME in `body-mime`), signature checked."""
    key = ingest.settings.mailgun_webhook_signing_key
    if key is None:
        raise HTTPException(
            503, "Mailgun inbound is not configured: set MAILGUN_WEBHOOK_SIGNING_KEY"
        )
    body = await request.body()  # kept: a raw MIME field is read from it (`_mime_field`)
    form = await request.form(
        max_files=MAX_FORM_FILES + 5, max_part_size=ingest.settings.email_webhook_max_bytes
    )
    try:
        content_type = request.headers.get("content-type", "")
        return await _mailgun(ingest, form, key.get_secret_value().encode(), body, content_type)
    finally:
        await form.close()


async def _mailgun(
    ingest: Ingest, form: FormData, key: bytes, body: bytes, content_type: str
) -> JSONResponse:
    timestamp, token = _text(form, "timestamp"), _text(form, "token")
    signature = _text(form, "signature")
    if not timestamp or not token or not signature:
        raise HTTPException(401, "missing Mailgun's timestamp, token and signature fields")
    if not mailgun_signature_valid(key, timestamp, token, signature):
        log.warning("mailgun_signature_mismatch")
        raise HTTPException(403, "the Mailgun signature does not match")
    if not _fresh(timestamp, ingest.settings.email_webhook_max_age_seconds):
        raise HTTPException(403, "the Mailgun timestamp is too old")
    if not _MAILGUN_TOKENS.first_time(token):
        raise HTTPException(403, "this Mailgun token was already used")
    envelope_from = _text(form, "sender") or None
    recipient = [a for a, _ in parse_addresses(_text(form, "recipient"))]
    data = await _mime_field(form, "body-mime", body, content_type)
    if data is not None:
        return await _file_mime(ingest, data, envelope_from, recipient, "mailgun", 406)
    pairs = _json(_text(form, "message-headers")) or []
    headers = [(str(p[0]), str(p[1])) for p in pairs if isinstance(p, list) and len(p) == 2]
    first = {k.lower(): v for k, v in reversed(headers)}
    try:
        sender, name = parse_address(_text(form, "from") or first.get("from"))
    except EmailError as err:
        return JSONResponse({"detail": str(err)}, status_code=406)
    count = _text(form, "attachment-count")
    names = [f"attachment-{i}" for i in range(1, int(count) + 1)] if count.isdigit() else []
    email = InboundEmail(
        sender=sender,
        sender_name=name,
        to=[a for a, _ in parse_addresses(first.get("to"))] + recipient,
        subject=_text(form, "subject") or first.get("subject"),
        text=_text(form, "body-plain"),
        html=_text(form, "body-html") or None,
        message_id=first.get("message-id") or _text(form, "Message-Id") or None,
        in_reply_to=first_message_id(first.get("in-reply-to")),
        references=message_ids(first.get("references")),
        headers=headers,
        attachments=await _files(form, names, {}),
        envelope_from=envelope_from,
        source="mailgun",
    )
    return await _file(ingest, email, 406)


# --- Postmark inbound ---


def _basic_auth(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        user, sep, password = base64.b64decode(value.strip()).decode().partition(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


@router.post("/postmark")
async def postmark_inbound(request: Request, ingest: IngestDep) -> JSONResponse:
    """Postmark's inbound JSON, behind the basic auth written into its webhook URL."""
    settings = ingest.settings
    if settings.postmark_inbound_username is None or settings.postmark_inbound_password is None:
        raise HTTPException(503, "Postmark inbound is not configured: set POSTMARK_INBOUND_*")
    given = _basic_auth(request)
    expected = (
        settings.postmark_inbound_username.encode(),
        settings.postmark_inbound_password.get_secret_value().encode(),
    )
    if given is None or not (
        secrets.compare_digest(given[0].encode(), expected[0])
        & secrets.compare_digest(given[1].encode(), expected[1])
    ):
        raise HTTPException(
            401,
            "Postmark inbound needs its basic-auth credentials",
            headers={"WWW-Authenticate": 'Basic realm="postmark-inbound"'},
        )
    payload = _json((await request.body()).decode("utf-8", "replace"))
    if not isinstance(payload, dict):
        raise HTTPException(400, "not a Postmark inbound JSON document")
    if isinstance(payload.get("RawEmail"), str) and payload["RawEmail"]:
        return await _file_mime(
            ingest,
            payload["RawEmail"].encode("utf-8", "surrogateescape"),
            None,
            [r.get("Email", "") for r in payload.get("ToFull") or [] if isinstance(r, dict)],
            "postmark",
            403,
        )
    headers = [
        (str(h.get("Name")), str(h.get("Value")))
        for h in payload.get("Headers") or []
        if isinstance(h, dict) and h.get("Name")
    ]
    first = {k.lower(): v for k, v in reversed(headers)}
    from_full = payload.get("FromFull")
    full: dict[str, Any] = from_full if isinstance(from_full, dict) else {}
    try:
        sender, name = (
            (str(full["Email"]), str(full.get("Name") or "") or None)
            if full.get("Email")
            else parse_address(str(payload.get("From") or ""))
        )
    except EmailError as err:
        return JSONResponse({"detail": str(err)}, status_code=403)
    attachments = []
    for item in (payload.get("Attachments") or [])[:MAX_FORM_FILES]:
        if isinstance(item, dict) and isinstance(item.get("Content"), str):
            try:
                data = base64.b64decode(item["Content"])
            except (ValueError, binascii.Error):
                continue
            attachments.append(
                Attachment(
                    item.get("Name"),
                    str(item.get("ContentType") or "application/octet-stream"),
                    data,
                )
            )
    to = [
        str(r.get("Email"))
        for r in payload.get("ToFull") or []
        if isinstance(r, dict) and r.get("Email")
    ]
    original = payload.get("OriginalRecipient")
    postmark_id = payload.get("MessageID")
    email = InboundEmail(
        sender=sender,
        sender_name=name,
        to=to + ([str(original)] if original and str(original) not in to else []),
        subject=str(payload.get("Subject") or "") or None,
        text=str(payload.get("TextBody") or ""),
        html=str(payload.get("HtmlBody") or "") or None,
        message_id=first.get("message-id") or (f"postmark:{postmark_id}" if postmark_id else None),
        in_reply_to=first_message_id(first.get("in-reply-to")),
        references=message_ids(first.get("references")),
        headers=headers,
        attachments=attachments,
        source="postmark",
    )
    return await _file(ingest, email, 403)
