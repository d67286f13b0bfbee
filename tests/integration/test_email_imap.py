"""A plain mailbox read over IMAP: a real IMAP server (pymap, an asyncio IMAP4rev1 server with
IDLE and MOVE, run as its own process on a free port), connected through the admin API, files
new mail as leads without any webhook, and marks or moves what it filed."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import aioimaplib
import pytest

from shvya_common.embedded import free_port
from tests.integration.mail_support import fixture, mail_app, mail_settings
from tests.keys import bearer, make_key
from tests.support import eventually

pytestmark = pytest.mark.integration

USER, PASSWORD = "sales@acme-solar.example", "imap-password-3c9d"


@pytest.fixture
def imap_server(tmp_path: Path) -> Iterator[int]:
    """pymap's in-memory backend with one mailbox user, listening on a free loopback port."""
    port = free_port()
    log = (tmp_path / "pymap.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pymap.main import main; sys.exit(main())",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-tls",
            "dict",
            "--demo-user",
            USER,
            "--demo-password",
            PASSWORD,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "pymap.log").read_text()) from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def imap_client(port: int) -> aioimaplib.IMAP4:
    client = aioimaplib.IMAP4("127.0.0.1", port, timeout=10)
    await client.wait_hello_from_server()
    assert (await client.login(USER, PASSWORD)).result == "OK"
    return client


def lead_mail(sender: str, subject: str, body: str, message_id: str) -> bytes:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = USER
    mail["Subject"] = subject
    mail["Message-ID"] = message_id
    mail["Date"] = "Mon, 01 Jun 2026 10:00:00 +0000"
    mail.set_content(body)
    return mail.as_bytes().replace(b"\n", b"\r\n")


async def deliver(port: int, raw: bytes, when: datetime | None = None) -> None:
    """What the mail server does when a message arrives: APPEND it to INBOX."""
    client = await imap_client(port)
    try:
        response = await client.append(raw, mailbox="INBOX", date=when)
        assert response.result == "OK", response
    finally:
        await client.logout()


async def connect_mailbox(ingest, client, port: int, **extra):  # type: ignore[no-untyped-def]
    """Connect the test server's mailbox through the admin API, as an admin of the default
    company would: (the admin's headers, the created mailbox)."""
    company = (await ingest.route_for(None)).company_id
    admin = bearer(await make_key(ingest.plat.pool, company))
    created = await client.post(
        "/v1/email/mailboxes",
        headers=admin,
        json={
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "username": USER,
            "password": PASSWORD,
            **extra,
        },
    )
    assert created.status_code == 201, created.text
    return admin, created.json()


async def test_an_imap_mailbox_files_new_mail_as_leads_and_marks_it(
    base_env: dict[str, str], db_url: str, tmp_path: Path, imap_server: int
) -> None:
    """A mailbox connected through the admin API (password stored encrypted) files mail that
    arrives after it was connected — while the reader waits in IDLE — marks it \\Seen (pymap
    keeps no keywords), leaves older mail alone, and takes a DSN as a bounce, not a lead."""
    old = lead_mail("Old Friend <old@example.org>", "Years ago", "Hello from 2020", "<old@x>")
    await deliver(imap_server, old, datetime(2020, 1, 2, tzinfo=UTC))
    settings = mail_settings(
        base_env, tmp_path, imap_enabled=True, imap_refresh_seconds=0.2, imap_poll_seconds=0.5
    )
    async with mail_app(settings) as (ingest, client):
        admin, mailbox = await connect_mailbox(ingest, client, imap_server)
        mailbox_id = mailbox["id"]
        pool = ingest.plat.pool
        stored = await pool.fetchval("SELECT password FROM email_mailboxes")
        assert PASSWORD not in stored and stored.startswith("v1.")
        await eventually(
            lambda: pool.fetchval(
                "SELECT last_checked_at FROM email_mailboxes WHERE id = $1", mailbox_id
            ),
            lambda checked: checked is not None,
        )
        await deliver(
            imap_server,
            lead_mail(
                "Meera Iyer <meera@example.in>",
                "Rooftop quote",
                "Can you quote 8 panels?",
                "<imap1@example.in>",
            ),
        )
        await deliver(
            imap_server,
            fixture("bounce_exim_hard.eml", MESSAGE_ID="someone@elsewhere.example"),
        )
        row = await eventually(
            lambda: pool.fetchrow(
                "SELECT m.body, m.meta, l.email, l.contact_name, m.job_id FROM messages m"
                " JOIN leads l ON l.id = m.lead_id WHERE l.email = 'meera@example.in'"
            ),
            lambda r: r is not None,
        )
        assert row["body"] == "Can you quote 8 panels?"
        assert row["contact_name"] == "Meera Iyer" and row["job_id"] is not None
        assert row["meta"]["source"] == "imap"
        reader = await imap_client(imap_server)
        try:
            await reader.select("INBOX")

            async def unseen() -> list[bytes]:
                found = await reader.uid_search("UNSEEN", charset=None)
                return [u for line in found.lines[:-1] for u in bytes(line).split()]

            # Only the 2020 mail stays unread: it predates the connection.
            remaining = await eventually(unseen, lambda uids: len(uids) == 1)
            fetched = await reader.uid("fetch", remaining[0].decode(), "(BODY.PEEK[HEADER])")
            assert b"<old@x>" in b"".join(bytes(x) for x in fetched.lines)
        finally:
            await reader.logout()
        leads = await pool.fetch("SELECT email FROM leads ORDER BY email")
        assert [r["email"] for r in leads] == ["meera@example.in"]
        listed = await client.get("/v1/email/mailboxes", headers=admin)
        assert listed.json()[0]["id"] == mailbox_id and listed.json()[0]["last_error"] is None
        assert "password" not in listed.json()[0]


async def test_move_mode_moves_filed_mail_to_its_folder(
    base_env: dict[str, str], db_url: str, tmp_path: Path, imap_server: int
) -> None:
    """With after_filing 'move', filed mail leaves the inbox for the filed folder."""
    settings = mail_settings(
        base_env, tmp_path, imap_enabled=True, imap_refresh_seconds=0.2, imap_poll_seconds=0.5
    )
    async with mail_app(settings) as (ingest, client):
        await connect_mailbox(
            ingest, client, imap_server, after_filing="move", filed_folder="SHVYA-Filed"
        )
        await deliver(
            imap_server,
            lead_mail(
                "Dev Rao <dev@example.in>",
                "EV charger",
                "Do you install chargers?",
                "<imap2@example.in>",
            ),
        )
        pool = ingest.plat.pool
        await eventually(
            lambda: pool.fetchval("SELECT count(*) FROM messages WHERE direction = 'inbound'"),
            lambda n: n == 1,
        )
        reader = await imap_client(imap_server)
        try:

            async def count(folder: str) -> int:
                await reader.select(folder)
                found = await reader.uid_search("ALL", charset=None)
                return len([u for line in found.lines[:-1] for u in bytes(line).split()])

            await eventually(lambda: count("SHVYA-Filed"), lambda n: n == 1)
            assert await count("INBOX") == 0
        finally:
            await reader.logout()
