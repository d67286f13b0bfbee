"""Helpers for the inbound-channel tests: ingest in-process with webhook secrets set, Meta-shaped
payloads signed as Meta signs them, and a look at what JetStream holds."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import nats

from shvya_ingest.app import create_app
from shvya_ingest.settings import IngestSettings
from tests.support import eventually

APP_SECRET = "meta-app-secret-3f9c2a7e51b04d6f"
VERIFY_TOKEN = "verify-token-7d1e9b2c"
LINK_SECRET = "link-secret-for-tests-0123456789abcdef"
PHONE_NUMBER_ID = "106540352242922"
WABA_ID = "102290129340398"
EMAIL_WEBHOOK_TOKEN = "email-webhook-token-5b8e1f0c2d"
# What an email webhook request carries: the platform's token (a company's key works too).
EMAIL_AUTH = {"Authorization": f"Bearer {EMAIL_WEBHOOK_TOKEN}"}


def ingest_settings(env: dict[str, str], **overrides: str) -> IngestSettings:
    values = {
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        # The platform's own number and account: their webhooks file into the default company.
        "WHATSAPP_CLOUD_PHONE_ID": PHONE_NUMBER_ID,
        "WHATSAPP_CLOUD_WABA_ID": WABA_ID,
        "EMAIL_WEBHOOK_TOKEN": EMAIL_WEBHOOK_TOKEN,
        "LINK_SECRET": LINK_SECRET,
        "PUBLIC_BASE_URL": "https://ingest.example.com",
        **env,
        **overrides,
    }
    return IngestSettings(**{k.lower(): v for k, v in values.items()})


@asynccontextmanager
async def ingest_client(env: dict[str, str], **overrides: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ingest_settings(env, **overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield client


def signature(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post_signed(client: httpx.AsyncClient, payload: dict[str, Any]) -> httpx.Response:
    """POST a payload the way Meta does: compact JSON with non-ASCII escaped, signed."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return await client.post(
        "/webhooks/whatsapp",
        content=body,
        headers={"content-type": "application/json", "x-hub-signature-256": signature(body)},
    )


async def post_accepted(client: httpx.AsyncClient, payload: dict[str, Any]) -> Any:
    """POST a signed WhatsApp webhook delivery; it must be answered 200. Returns its JSON."""
    response = await post_signed(client, payload)
    assert response.status_code == 200, response.text
    return response.json()


async def events(conn: asyncpg.Connection, kind: str) -> list[Any]:
    """The payloads of the events of type `kind`, oldest first."""
    rows = await conn.fetch("SELECT payload FROM events WHERE type = $1 ORDER BY created_at", kind)
    return [r["payload"] for r in rows]


def text_message(wamid: str, sender: str, body: str, timestamp: int = 1749416383) -> dict[str, Any]:
    return {
        "from": sender,
        "id": wamid,
        "timestamp": str(timestamp),
        "type": "text",
        "text": {"body": body},
    }


def status(wamid: str, state: str, timestamp: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": wamid,
        "status": state,
        "timestamp": str(timestamp),
        "recipient_id": "16505551234",
        **extra,
    }


def meta_payload(
    messages: Iterable[dict[str, Any]] = (),
    statuses: Iterable[dict[str, Any]] = (),
    contacts: Iterable[tuple[str, str]] = (),
    phone_number_id: str = PHONE_NUMBER_ID,
) -> dict[str, Any]:
    """The `messages` webhook as Meta's reference shows it."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
    }
    contact_list = [{"profile": {"name": name}, "wa_id": wa_id} for wa_id, name in contacts]
    if contact_list:
        value["contacts"] = contact_list
    if messages:
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"value": value, "field": "messages"}]}],
    }


async def jobs_in_stream(
    nats_url: str, prefix: str, until: Callable[[dict[str, int]], bool]
) -> dict[str, int]:
    """The jobs waiting in JetStream per task, once `until` holds of them: a webhook is answered
    at COMMIT and its jobs' publishes land just after, so a test waits for them (10 s)."""
    return await eventually(lambda: job_subject_counts(nats_url, prefix), until, timeout=10)


async def job_subject_counts(nats_url: str, prefix: str) -> dict[str, int]:
    """How many jobs wait in JetStream per task (nothing consumes them in these tests)."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(f"{prefix.upper()}_JOBS", subjects_filter=">")
        counts: dict[str, int] = {}
        for subject, n in (info.state.subjects or {}).items():
            task = subject.split(".", 3)[3].rsplit(".", 1)[0]  # <prefix>.jobs.p<n>.<task>.<id>
            counts[task] = counts.get(task, 0) + n
        return counts
    finally:
        await nc.close()


@asynccontextmanager
async def database(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        yield conn
    finally:
        await conn.close()
