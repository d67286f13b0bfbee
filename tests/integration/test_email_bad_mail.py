"""One bad mail never holds up the rest, at every door that takes raw MIME: a mailbox (a real
pymap IMAP server) holding a mail in `charset=unknown-8bit`, one with no sender, one with NUL
characters and a normal one files the three that can be filed and marks all four; the SMTP
receiver (fed by aiosmtplib) answers 250 for the unknown charset and a permanent 550 for what
cannot be parsed, never 451 forever; SendGrid's raw-MIME mode answers 200 and 400 with the
reason, never 500; the JSON webhook files a NUL-bearing text without it."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from shvya_common.embedded import free_port
from tests.integration import test_email_imap as imap
from tests.integration.mail_support import (
    EMAIL_AUTH,
    SendGridSigner,
    mail_app,
    mail_ingest,
    mail_settings,
)
from tests.integration.webhook_support import database, ingest_client
from tests.support import eventually
from tests.unit.test_email_bad_mime import too_deep

pytestmark = pytest.mark.integration

imap_server = imap.imap_server  # the same pymap server as the other IMAP tests
BOUNDARY = "xYzZY"
FORM = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def unknown_8bit_mail(message_id: str) -> bytes:
    """A mail as many MTAs label 8-bit text they cannot name: windows-1252 bytes here."""
    return (
        b"From: Lucie Martin <lucie@example.fr>\r\nTo: sales@acme-solar.example\r\n"
        b"Subject: Devis\r\nMessage-ID: " + message_id.encode() + b"\r\n"
        b"Date: Mon, 01 Jun 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=unknown-8bit\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"\r\nBonjour, un devis pour 12 panneaux, s'il vous pla\xeet ? Merci \x96 Lucie\r\n"
    )


def nul_mail() -> bytes:
    return (
        b"From: Omar Haddad <omar@example.net>\r\nTo: sales@acme-solar.example\r\n"
        b"Subject: Bat\x00tery\r\nMessage-ID: <nul1@example.net>\r\n"
        b"Date: Mon, 01 Jun 2026 10:01:00 +0000\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nDo you sell\x00 batteries?\r\n"
    )


async def inbound(pool: Any) -> dict[str, Any]:
    rows = await pool.fetch(
        "SELECT l.email, m.body, m.meta->>'subject' AS subject FROM messages m"
        " JOIN leads l ON l.id = m.lead_id WHERE m.direction = 'inbound'"
    )
    return {r["email"]: (r["body"], r["subject"]) for r in rows}


@asynccontextmanager
async def reading(
    base_env: dict[str, str], tmp_path: Path, imap_server: int, *mails: bytes
) -> AsyncIterator[tuple[Any, Any, dict[str, str]]]:
    """The mails delivered to the IMAP server, then ingest reading that mailbox: (ingest, its
    client, the admin key's headers)."""
    for raw in mails:
        await imap.deliver(imap_server, raw)
    settings = mail_settings(
        base_env, tmp_path, imap_enabled=True, imap_refresh_seconds=0.2, imap_poll_seconds=0.5
    )
    async with mail_app(settings) as (ingest, client):
        admin, _ = await imap.connect_mailbox(ingest, client, imap_server)
        yield ingest, client, admin


async def unseen(imap_server: int) -> list[bytes]:
    """The UIDs of the inbox's mail nobody has read (or filed) yet."""
    reader = await imap.imap_client(imap_server)
    try:
        await reader.select("INBOX")
        found = await reader.uid_search("UNSEEN", charset=None)
        return [u for line in found.lines[:-1] for u in bytes(line).split()]
    finally:
        await reader.logout()


async def test_a_mailbox_files_past_mail_it_cannot_read_or_decode(
    base_env: dict[str, str], db_url: str, tmp_path: Path, imap_server: int
) -> None:
    """The unknown-8bit mail comes first and is filed, decoded; the one with no sender is
    marked and named in last_error; the NUL mail is filed without its NULs; the normal mail
    after them is filed. Nothing stays unread."""
    async with reading(
        base_env,
        tmp_path,
        imap_server,
        unknown_8bit_mail("<u8@example.fr>"),
        b"To: sales@acme-solar.example\r\nSubject: ?\r\nMessage-ID: <nobody@x>\r\n\r\nhi\r\n",
        nul_mail(),
        imap.lead_mail("Meera Iyer <meera@example.in>", "Quote", "8 panels?", "<ok@example.in>"),
    ) as (ingest, client, admin):
        pool = ingest.plat.pool
        filed = await eventually(lambda: inbound(pool), lambda found: len(found) == 3)
        assert filed == {
            "lucie@example.fr": (
                "Bonjour, un devis pour 12 panneaux, s'il vous plaît ? Merci – Lucie",
                "Devis",
            ),
            "omar@example.net": ("Do you sell batteries?", "Battery"),
            "meera@example.in": ("8 panels?", "Quote"),
        }
        listed = await eventually(
            lambda: client.get("/v1/email/mailboxes", headers=admin),
            lambda r: r.json()[0]["last_error"] is not None,
        )
        note = listed.json()[0]["last_error"]
        assert re.fullmatch(r"skipped 1 mail that cannot be filed: UID \d+: sender: .*", note)
        assert await unseen(imap_server) == []


async def test_smtp_receiver_files_an_unknown_charset_and_refuses_an_unparseable_mail(
    base_env: dict[str, str], db_url: str
) -> None:
    """250 and filed for the unknown-8bit mail; a permanent 550 with the reason for the mail
    too deep to parse, so the sending server bounces it instead of retrying it for days."""
    port = free_port()
    overrides = {"SMTP_RECEIVER_ENABLED": "true", "SMTP_RECEIVER_PORT": str(port)}

    async def send(raw: bytes) -> None:
        await aiosmtplib.send(
            raw,
            sender="sender@example.fr",
            recipients=["sales@acme-solar.example"],
            hostname="127.0.0.1",
            port=port,
            timeout=30,
        )

    async with ingest_client(base_env, **overrides):
        await send(unknown_8bit_mail("<smtp-u8@example.fr>"))
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(too_deep())
        assert refused.value.code == 550, refused.value
        assert "cannot be parsed" in refused.value.message
        async with database(db_url) as conn:
            rows = await conn.fetch(
                "SELECT l.email, m.body FROM messages m JOIN leads l ON l.id = m.lead_id"
            )
    assert [(r["email"], r["body"]) for r in rows] == [
        ("lucie@example.fr", "Bonjour, un devis pour 12 panneaux, s'il vous plaît ? Merci – Lucie")
    ]


def raw_mime_form(raw: bytes) -> bytes:
    """SendGrid's raw-MIME POST: the whole message, as it came, in the `email` field."""
    fields = {
        "email": raw,
        "to": b"sales@acme-solar.example",
        "envelope": json.dumps(
            {"to": ["sales@acme-solar.example"], "from": "x@example.fr"}
        ).encode(),
    }
    out = b""
    for name, value in fields.items():
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


async def test_sendgrid_raw_mime_files_an_unknown_charset_and_refuses_an_unparseable_mail(
    base_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    """200 and filed for the unknown-8bit mail; 400 with the reason (which stops SendGrid's
    retries) for the mail too deep to parse, never a 500."""
    signer = SendGridSigner()
    settings = mail_settings(base_env, tmp_path, sendgrid_inbound_public_key=signer.public_key)
    async with mail_ingest(settings) as client:
        for raw, status in ((unknown_8bit_mail("<sg-u8@example.fr>"), 200), (too_deep(), 400)):
            body = raw_mime_form(raw)
            response = await client.post(
                "/webhooks/email/sendgrid", content=body, headers={**FORM, **signer.headers(body)}
            )
            assert response.status_code == status, response.text
        assert "cannot be parsed" in response.json()["detail"]
    async with database(db_url) as conn:
        rows = await conn.fetch("SELECT body FROM messages")
    assert [r["body"] for r in rows] == [
        "Bonjour, un devis pour 12 panneaux, s'il vous plaît ? Merci – Lucie"
    ]


async def test_json_webhook_files_text_with_nul_characters_without_them(
    base_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    async with mail_ingest(mail_settings(base_env, tmp_path)) as client:
        response = await client.post(
            "/webhooks/email",
            headers=EMAIL_AUTH,
            json={
                "from": "Ravi\u0000 <ravi@example.in>",
                "subject": "Sol\u0000ar",
                "text": "Price for\u0000 10 kW?",
                "message_id": "<nul-json@example.in>",
            },
        )
        assert response.status_code == 200, response.text
    async with database(db_url) as conn:
        row = await conn.fetchrow(
            "SELECT m.body, m.meta->>'subject' AS subject, l.contact_name FROM messages m"
            " JOIN leads l ON l.id = m.lead_id"
        )
    assert (row["body"], row["subject"], row["contact_name"]) == (
        "Price for 10 kW?",
        "Solar",
        "Ravi",
    )


async def test_a_mail_that_fails_every_time_is_held_and_the_rest_is_filed(
    base_env: dict[str, str], db_url: str, tmp_path: Path, imap_server: int
) -> None:
    """A mail whose filing PostgreSQL refuses every time (a trigger here; a constraint the mail
    alone breaks in life) no longer blocks the mailbox: after HOLD_AFTER_FAILURES tries it is
    held, the mail after it is filed, last_error names it, and it stays unmarked on the server,
    to be filed once the cause is gone."""
    async with database(db_url) as conn:
        await conn.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'refused for this mail'; END$$;"
            " CREATE TRIGGER refuse_poison BEFORE INSERT ON messages FOR EACH ROW"
            " WHEN (NEW.meta->>'subject' = 'Poison') EXECUTE FUNCTION refuse_poison()"
        )
    async with reading(
        base_env,
        tmp_path,
        imap_server,
        imap.lead_mail("Pia Berg <pia@example.se>", "Poison", "never filed", "<p@example.se>"),
        imap.lead_mail("Meera Iyer <meera@example.in>", "Quote", "8 panels?", "<ok@example.in>"),
    ) as (ingest, client, admin):
        filed = await eventually(lambda: inbound(ingest.plat.pool), lambda found: len(found) == 1)
        assert filed == {"meera@example.in": ("8 panels?", "Quote")}
        listed = await eventually(
            lambda: client.get("/v1/email/mailboxes", headers=admin),
            lambda r: "held" in (r.json()[0]["last_error"] or ""),
        )
        note = listed.json()[0]["last_error"]
        assert re.search(
            r"UID \d+ held: failed 3 times \(RaiseError: refused for this mail\)", note
        )
        assert len(await unseen(imap_server)) == 1
