"""Outbound email as mailbox providers read it: the raw bytes a real SMTP server (aiosmtpd)
received, checked before any parsing — unsubscribe headers, threading, Auto-Submitted, folding,
DKIM — and what a session that dies at or after DATA is recorded as."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import asyncpg
import dkim
import pytest
from aiosmtpd.controller import Controller

from shvya_common.contracts import SendParams
from shvya_common.crypto import SecretBox, generate_key
from shvya_common.embedded import free_port
from shvya_common.errors import PermanentError, RetryableError
from shvya_dispatch.channels.dkim import dns_record, generate_private_key, key_context
from shvya_dispatch.channels.email import EmailChannel
from shvya_dispatch.channels.errors import SendOutcomeUnknown
from shvya_dispatch.repository import EmailRepository, store_dkim_key
from shvya_dispatch.settings import DispatchSettings
from tests.integration.dispatch_support import Dispatcher, message_row

pytestmark = pytest.mark.integration

PUBLIC = "https://shvya.example.com"
# Structured headers: RFC 2047 encoded words are never allowed in them.
STRUCTURED = (
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"auto-submitted",
    b"date",
    b"to",
    b"x-auto-response-suppress",
    b"mime-version",
    b"content-type",
)


@dataclass
class Capture:
    """Keeps the raw bytes each DATA delivered; `mode` makes the server misbehave after DATA."""

    mode: str = "ok"
    received: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(bytes(envelope.original_content or envelope.content))
        if self.mode == "drop":
            server.transport.close()  # the connection dies before our 250 goes out
        elif self.mode == "hang":
            await asyncio.sleep(30)
        elif self.mode == "refuse":
            return "554 5.7.1 Message rejected as spam"
        elif self.mode == "later":
            return "451 4.3.0 Try again later"
        return "250 2.0.0 queued"


@pytest.fixture
def capture() -> Iterator[tuple[Capture, int]]:
    handler = Capture()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    from shvya_common.db import create_pool

    p = await create_pool(db_url, 1, 3)
    yield p
    await p.close()


def settings_for(port: int, db_url: str = "", **extra: Any) -> DispatchSettings:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_security": "none",
        "smtp_from": "sales@acme-solar.example",
        "smtp_from_name": "Acme Solar Sales",
        "smtp_timeout_seconds": 5,
        "public_base_url": PUBLIC,
        "link_secret": "raw-header-test-secret-0123456789",
        "email_unsubscribe_mailto": "unsubscribe@acme-solar.example",
        "policy_email_quiet_hours": "",
    }
    if db_url:
        values["database_url"] = db_url
    values.update(extra)
    return DispatchSettings(_env_file=None, **values)


async def seed(pool: asyncpg.Pool, company_settings: dict[str, Any] | None = None) -> SendParams:
    """A company and a lead; the send request of a campaign mail to that lead."""
    company_id = await pool.fetchval(
        "INSERT INTO companies (name, settings) VALUES ('Acme Solar', $1) RETURNING id",
        company_settings or {},
    )
    lead_id = await pool.fetchval(
        "INSERT INTO leads (company_id, email, contact_name)"
        " VALUES ($1, 'ana@example.org', 'Ana Lead') RETURNING id",
        company_id,
    )
    template_id = await pool.fetchval(
        "INSERT INTO templates (company_id, name, channel, subject, body)"
        " VALUES ($1, 'intro', 'email', 'Solar for {{1}}', 'Hi') RETURNING id",
        company_id,
    )
    return SendParams(
        company_id=company_id,
        lead_id=lead_id,
        channel="email",
        to="ana@example.org",
        text="Hello Ana, here is our offer: https://acme-solar.example/offer",
        template_id=template_id,
        template_params=["Ana"],
        send_key=f"k:{uuid.uuid4()}",
        purpose="marketing",
    )


async def inbound(pool: asyncpg.Pool, params: SendParams, meta: dict[str, Any]) -> uuid.UUID:
    """An inbound email from the lead, as ingest files it (its threading facts in meta)."""
    message_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body, status,"
        " provider_message_id, meta) VALUES ($1, $2, 'inbound', 'email', 'How much?',"
        " 'received', $3, $4) RETURNING id",
        params.company_id,
        params.lead_id,
        meta["message_id"],
        meta,
    )
    return message_id


def header_block(raw: bytes) -> list[bytes]:
    """The raw header lines (folded continuation lines kept as they are)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return head.split(b"\r\n")


def raw_headers(raw: bytes) -> dict[bytes, bytes]:
    """Each top-level header's raw value, unfolded by removing the CRLF of each fold."""
    out: dict[bytes, bytes] = {}
    current: bytes | None = None
    for line in header_block(raw):
        if line[:1] in (b" ", b"\t") and current is not None:
            out[current] += line
            continue
        name, _, value = line.partition(b":")
        current = name.strip().lower()
        out[current] = value.strip()
    return out


def parsed(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


async def test_campaign_headers_are_raw_folded_only_at_whitespace_and_never_encoded(
    capture: tuple[Capture, int], pool: asyncpg.Pool
) -> None:
    """A first message leaves with the template's subject, a raw List-Unsubscribe of an https and
    a mailto target in angle brackets, One-Click, Auto-Submitted: auto-generated, no encoded word
    in any structured header, and lines folded only before existing whitespace."""
    server, port = capture
    params = await seed(pool)
    message_id = uuid.uuid4()
    channel = EmailChannel(settings_for(port), EmailRepository(pool))
    result = await channel.send(params.to, params.text, message_id=message_id, params=params)

    [raw] = server.received
    lines = header_block(raw)
    headers = raw_headers(raw)
    for name in STRUCTURED:
        if name in headers:
            assert b"=?" not in headers[name], (name, headers[name])
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    for line in lines:
        # A line over 78 characters is one that holds a single unbreakable token.
        if len(line) > 78:
            assert b" " not in line.strip().split(b": ", 1)[-1], line
    unsubscribe = headers[b"list-unsubscribe"]
    match = re.fullmatch(
        rb"<(https://shvya\.example\.com/u/[A-Za-z0-9_.-]+)>, <(mailto:[^>]+)>", unsubscribe
    )
    assert match is not None, unsubscribe
    assert match.group(2) == b"mailto:unsubscribe@acme-solar.example?subject=unsubscribe"
    assert headers[b"list-unsubscribe-post"] == b"List-Unsubscribe=One-Click"
    assert headers[b"auto-submitted"] == b"auto-generated"
    assert headers[b"x-auto-response-suppress"] == b"OOF, AutoReply"
    assert headers[b"subject"] == b"Solar for Ana"
    assert headers[b"message-id"] == f"<shvya.{message_id.hex}@acme-solar.example>".encode()
    assert result.provider_message_id == f"shvya.{message_id.hex}@acme-solar.example"
    assert b"in-reply-to" not in headers and b"references" not in headers
    # A campaign is not transactional: its HTML part carries the open pixel.
    html = parsed(raw).get_body(("html",))
    assert html is not None and "/t/o/" in html.get_content()


async def test_a_reply_threads_and_is_marked_auto_replied_without_a_pixel(
    capture: tuple[Capture, int], pool: asyncpg.Pool
) -> None:
    """An AI reply carries `Re: <the lead's subject>` (no Re: pile-up), In-Reply-To the lead's
    Message-ID, References the chain, Auto-Submitted: auto-replied, the unsubscribe link in both
    parts, and no open pixel."""
    server, port = capture
    params = await seed(pool)
    parent = await inbound(
        pool,
        params,
        {
            "message_id": "CAF-lead-2@mail.example.org",
            "subject": "RE: Re: Pricing question",
            "references": ["shvya.root@acme-solar.example", "CAF-lead-1@mail.example.org"],
            "in_reply_to": "CAF-lead-1@mail.example.org",
        },
    )
    reply = params.model_copy(
        update={"purpose": "reply", "reply_to_message_id": parent, "template_id": None}
    )
    channel = EmailChannel(settings_for(port), EmailRepository(pool))
    await channel.send(
        reply.to, "The Home plan is $99 a month.", message_id=uuid.uuid4(), params=reply
    )

    [raw] = server.received
    headers = raw_headers(raw)
    assert headers[b"subject"] == b"Re: Pricing question"
    assert headers[b"in-reply-to"] == b"<CAF-lead-2@mail.example.org>"
    assert headers[b"references"].split() == [
        b"<shvya.root@acme-solar.example>",
        b"<CAF-lead-1@mail.example.org>",
        b"<CAF-lead-2@mail.example.org>",
    ]
    assert headers[b"auto-submitted"] == b"auto-replied"
    msg = parsed(raw)
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content().startswith("The Home plan is $99 a month.")
    assert "/u/" in plain.get_content() and "/u/" in html.get_content()
    assert "/t/o/" not in html.get_content() and "<img" not in html.get_content()


async def test_a_company_can_turn_open_tracking_on_for_replies(
    capture: tuple[Capture, int], pool: asyncpg.Pool
) -> None:
    """companies.settings.email_reply_open_tracking=true puts the pixel back on replies."""
    server, port = capture
    params = await seed(pool, {"email_reply_open_tracking": True})
    reply = params.model_copy(update={"purpose": "reply", "template_id": None})
    channel = EmailChannel(settings_for(port), EmailRepository(pool))
    await channel.send(reply.to, "Thanks!", message_id=uuid.uuid4(), params=reply)
    html = parsed(server.received[0]).get_body(("html",))
    assert html is not None and "/t/o/" in html.get_content()


async def test_dkim_signature_covers_unsubscribe_headers_and_verifies(
    capture: tuple[Capture, int], pool: asyncpg.Pool
) -> None:
    """With a company key stored encrypted, the mail is DKIM-signed for the From domain; the
    signature covers List-Unsubscribe and List-Unsubscribe-Post and verifies against the DNS
    record the CLI prints, and an edited body no longer verifies."""
    server, port = capture
    params = await seed(pool)
    keyring = f"k1:{generate_key()}"
    box = SecretBox.from_setting(keyring)
    pem = generate_private_key(1024)
    domain = "acme-solar.example"
    stored = box.encrypt(pem.decode(), key_context(params.company_id, domain))
    assert await store_dkim_key(pool, params.company_id, domain, "shvya1", stored)
    settings = settings_for(port, secrets_keys=keyring)
    await EmailChannel(settings, EmailRepository(pool)).send(
        params.to, params.text, message_id=uuid.uuid4(), params=params
    )
    [raw] = server.received
    headers = raw_headers(raw)
    signature = headers[b"dkim-signature"]
    assert b"d=acme-solar.example" in signature and b"s=shvya1" in signature
    signed = re.search(rb"h=([^;]+)", signature)
    assert signed is not None
    names = {h.strip().lower() for h in signed.group(1).replace(b" ", b"").split(b":")}
    assert {b"list-unsubscribe", b"list-unsubscribe-post", b"from", b"subject"} <= names

    record = dns_record(pem).encode()

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"shvya1._domainkey.acme-solar.example."
        return record

    assert dkim.verify(raw, dnsfunc=dns)
    assert not dkim.verify(raw.replace(b"Hello Ana", b"Hello Bob"), dnsfunc=dns)


async def test_a_key_that_cannot_be_decrypted_stops_the_send(
    capture: tuple[Capture, int], pool: asyncpg.Pool
) -> None:
    """A stored DKIM key without the SECRETS_KEYS that opens it is a permanent error, never an
    unsigned send."""
    server, port = capture
    params = await seed(pool)
    other = SecretBox.from_setting(f"k9:{generate_key()}")
    stored = other.encrypt(generate_private_key(1024).decode(), "elsewhere")
    await store_dkim_key(pool, params.company_id, "acme-solar.example", "s", stored)
    channel = EmailChannel(settings_for(port), EmailRepository(pool))
    with pytest.raises(PermanentError, match="DKIM"):
        await channel.send(params.to, params.text, message_id=uuid.uuid4(), params=params)
    assert server.received == []


@pytest.mark.parametrize("mode", ["drop", "hang"])
async def test_a_session_lost_after_data_is_unknown_and_never_repeated(
    capture: tuple[Capture, int], pool: asyncpg.Pool, db_url: str, mode: str
) -> None:
    """When the connection drops (or the reply never comes) after DATA, the channel raises
    SendOutcomeUnknown and the send handler records 'unknown' with an event instead of failing
    (so the job is not retried): the lead gets the message at most once."""
    server, port = capture
    server.mode = mode
    params = await seed(pool)
    message_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO messages (id, company_id, lead_id, direction, channel, body, status,"
        " send_key, recipient, priority, meta) VALUES ($1, $2, $3, 'outbound', 'email', $4,"
        " 'queued', $5, $6, 100, '{}')",
        message_id,
        params.company_id,
        params.lead_id,
        params.text,
        params.send_key,
        params.to,
    )
    settings = settings_for(port, db_url, smtp_timeout_seconds=1)
    async with Dispatcher(pool, settings) as dispatcher:
        outcome = await dispatcher.send(message_id, params)
        assert outcome["status"] == "unknown"
    row = await message_row(pool, message_id)
    assert row["status"] == "unknown"
    events = await pool.fetch(
        "SELECT type FROM events WHERE lead_id = $1 AND type = 'message.send_ambiguous'",
        params.lead_id,
    )
    assert len(events) >= 1
    assert len(server.received) == 1


async def test_explicit_refusals_after_data_follow_their_reply_code(
    capture: tuple[Capture, int], pool: asyncpg.Pool
) -> None:
    """A 451 or 554 answered to the end of DATA means the server did not take the message: it is
    retryable or permanent by its code, not 'unknown'."""
    server, port = capture
    params = await seed(pool)
    channel = EmailChannel(settings_for(port), EmailRepository(pool))
    server.mode = "later"
    with pytest.raises(RetryableError) as later:
        await channel.send(params.to, params.text, message_id=uuid.uuid4(), params=params)
    assert not isinstance(later.value, SendOutcomeUnknown)
    server.mode = "refuse"
    with pytest.raises(PermanentError) as refused:
        await channel.send(params.to, params.text, message_id=uuid.uuid4(), params=params)
    assert not isinstance(refused.value, SendOutcomeUnknown)
