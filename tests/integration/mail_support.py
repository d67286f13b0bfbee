"""Helpers for the inbound email tests: ingest in-process with hermetic settings (no `.env`),
each provider's request signed the way that provider signs it, and database look-ups."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shvya_ingest.api import Ingest
from shvya_ingest.app import create_app
from shvya_ingest.settings import IngestSettings

FIXTURES = Path(__file__).parent.parent / "fixtures" / "email"
LINK_SECRET = "link-secret-for-mail-tests-0123456789"
MAILGUN_KEY = "key-mailgun-signing-0f1e2d3c4b5a6978"
POSTMARK_USER = "postmark"
POSTMARK_PASSWORD = "pm-inbound-password-7c1d"
SECRETS = "t1:" + base64.urlsafe_b64encode(b"k" * 32).rstrip(b"=").decode()


class SendGridSigner:
    """The private half of a SendGrid Inbound Parse security policy, made here."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: str | None = None) -> dict[str, str]:
        ts = timestamp or str(int(time.time()))
        signature = self.key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        }


def mailgun_fields(token: str, key: str = MAILGUN_KEY) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256)
    return {"timestamp": timestamp, "token": token, "signature": signature.hexdigest()}


def postmark_auth(user: str = POSTMARK_USER, password: str = POSTMARK_PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def mail_settings(env: dict[str, str], tmp: Path, **overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {k.lower(): v for k, v in env.items()}
    values.update(
        link_secret=LINK_SECRET,
        public_base_url="https://ingest.example.com",
        mailgun_webhook_signing_key=MAILGUN_KEY,
        postmark_inbound_username=POSTMARK_USER,
        postmark_inbound_password=POSTMARK_PASSWORD,
        secrets_keys=SECRETS,
        media_dir=str(tmp / "media"),
        imap_enabled=False,
    )
    values.update(overrides)
    return IngestSettings(_env_file=None, **values)


@asynccontextmanager
async def mail_app(settings: IngestSettings) -> AsyncIterator[tuple[Ingest, httpx.AsyncClient]]:
    """Ingest in this process (its lifespan run), and an HTTP client for it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield app.state.ingest, client


@asynccontextmanager
async def mail_ingest(settings: IngestSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with mail_app(settings) as (_, client):
        yield client


def fixture(name: str, **values: str) -> bytes:
    """A fixture mail with its {PLACEHOLDERS} filled, in CRLF form as on the wire."""
    raw = (FIXTURES / name).read_bytes()
    for key, value in values.items():
        raw = raw.replace(("{" + key + "}").encode(), value.encode())
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def postmark_payload(**overrides: Any) -> dict[str, Any]:
    """Postmark's inbound JSON, shaped like the example in Postmark's documentation."""
    payload: dict[str, Any] = {
        "FromName": "Ana Lead",
        "MessageStream": "inbound",
        "From": "ana@example.org",
        "FromFull": {"Email": "ana@example.org", "Name": "Ana Lead", "MailboxHash": ""},
        "To": '"Acme Sales" <sales@acme-solar.example>',
        "ToFull": [{"Email": "sales@acme-solar.example", "Name": "Acme Sales", "MailboxHash": ""}],
        "Cc": "",
        "CcFull": [],
        "Bcc": "",
        "BccFull": [],
        "OriginalRecipient": "sales@acme-solar.example",
        "Subject": "Quote for 6 panels",
        "MessageID": "73e6d360-66eb-11e1-8e72-a8904824019b",
        "ReplyTo": "",
        "MailboxHash": "",
        "Date": "Mon, 1 Jun 2026 10:30:00 +0000",
        "TextBody": "Hi, can I get a quote for 6 panels?",
        "HtmlBody": "<p>Hi, can I get a quote for 6 panels?</p>",
        "StrippedTextReply": "",
        "Tag": "",
        "Headers": [
            {"Name": "X-Spam-Status", "Value": "No"},
            {"Name": "MIME-Version", "Value": "1.0"},
            {"Name": "Message-ID", "Value": "<CApostmark.1@mail.example.org>"},
        ],
        "Attachments": [
            {
                "Name": "roof.jpg",
                "Content": base64.b64encode(b"\xff\xd8\xff fake jpeg").decode(),
                "ContentType": "image/jpeg",
                "ContentLength": 14,
            }
        ],
    }
    payload.update(overrides)
    return payload


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()
