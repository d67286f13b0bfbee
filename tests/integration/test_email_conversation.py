"""A lead's email conversation through the real services in this process: ingest's SMTP receiver
takes the lead's mail, engage answers (offline responder), dispatch sends over SMTP to a real
aiosmtpd that keeps the raw bytes. The exchange threads; an out-of-office is never answered; a
bounce suppresses the address; a lead that loops with us trips the reply breaker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
import pytest
from aiosmtpd.controller import Controller

from shvya_common.bus import Worker
from shvya_common.embedded import free_port
from shvya_common.runtime import Platform
from shvya_dispatch.app import make_handlers as dispatch_handlers
from shvya_dispatch.settings import DispatchSettings
from shvya_engage.app import make_handlers as engage_handlers
from shvya_engage.settings import EngageSettings
from shvya_ingest.app import create_app
from tests.integration.mail_support import fixture, mail_settings
from tests.support import eventually

pytestmark = pytest.mark.integration

SALES = "sales@acme-solar.example"


@dataclass
class Outbox:
    """The SMTP server dispatch sends to: raw bytes of each message, in order."""

    received: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(bytes(envelope.original_content or envelope.content))
        return "250 2.0.0 queued"


@pytest.fixture
def outbox() -> Iterator[tuple[Outbox, int]]:
    handler, port = Outbox(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def headers_of(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    current = ""
    for line in raw.split(b"\r\n\r\n", 1)[0].decode().split("\r\n"):
        if line[:1] in (" ", "\t"):
            out[current] += line
        else:
            name, _, value = line.partition(":")
            current = name.lower()
            out[current] = value.strip()
    return out


@dataclass
class Stack:
    plat: Platform
    smtp_port: int
    outbox: Outbox

    @property
    def pool(self) -> asyncpg.Pool:
        return self.plat.pool

    async def mail(self, message: EmailMessage | bytes, sender: str | None = None) -> None:
        """The lead's mail server delivers to ingest's SMTP receiver."""
        if isinstance(message, bytes):
            # Raw bytes with an envelope sender, which may be the null sender of a DSN.
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.smtp_port, timeout=10)
            async with smtp:
                await smtp.mail(sender or "")
                await smtp.rcpt(SALES)
                await smtp.data(message)
        else:
            await aiosmtplib.send(message, hostname="127.0.0.1", port=self.smtp_port, timeout=10)

    async def sent(self, count: int) -> list[bytes]:
        await eventually(lambda: _value(len(self.outbox.received)), lambda n: n >= count)
        return self.outbox.received


async def _value(value: Any) -> Any:
    return value


@asynccontextmanager
async def services(
    base_env: dict[str, str], tmp_path: Path, outbox: tuple[Outbox, int], **engage: Any
) -> AsyncIterator[Stack]:
    handler, outbox_port = outbox
    smtp_port = free_port()
    ingest_settings = mail_settings(
        base_env, tmp_path, smtp_receiver_enabled=True, smtp_receiver_port=smtp_port
    )
    common = {k.lower(): v for k, v in base_env.items() if k != "ADMIN_TOKEN"}
    engage_settings = EngageSettings(
        _env_file=None, **common, openai_api_key=None, embeddings_provider="none", **engage
    )
    dispatch_settings = DispatchSettings(
        _env_file=None,
        **common,
        smtp_host="127.0.0.1",
        smtp_port=outbox_port,
        smtp_security="none",
        smtp_from=SALES,
        smtp_from_name="Acme Solar Sales",
        policy_email_quiet_hours="",
        link_secret="link-secret-for-mail-tests-0123456789",
    )
    app = create_app(ingest_settings)
    async with app.router.lifespan_context(app), AsyncExitStack() as stack:
        plat: Platform = app.state.ingest.plat
        for service, settings, factory in (
            ("engage", engage_settings, engage_handlers(engage_settings)),
            ("dispatch", dispatch_settings, dispatch_handlers(dispatch_settings)),
        ):
            worker = Worker(
                service=service,
                bus=plat.bus,
                nc=plat.nc,
                handlers=await factory(plat, stack),
                retry_schedule=settings.retry_schedule,
                concurrency=4,
                ack_wait=settings.ack_wait_seconds,
                poll_seconds=settings.worker_poll_seconds,
            )
            await worker.start()
            stack.push_async_callback(worker.stop)
        yield Stack(plat, smtp_port, handler)


def lead_mail(
    sender: str,
    subject: str,
    body: str,
    message_id: str,
    *,
    in_reply_to: str | None = None,
    references: str | None = None,
    extra: dict[str, str] | None = None,
) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = f"Acme Solar <{SALES}>"
    mail["Subject"] = subject
    mail["Message-ID"] = message_id
    if in_reply_to:
        mail["In-Reply-To"] = in_reply_to
    if references:
        mail["References"] = references
    for name, value in (extra or {}).items():
        mail[name] = value
    mail.set_content(body)
    return mail


async def test_an_exchange_reads_as_one_thread_in_the_leads_mail_client(
    base_env: dict[str, str], tmp_path: Path, outbox: tuple[Outbox, int]
) -> None:
    """Lead → AI → lead (from another address, quoting) → AI: both answers say 'Re: Pricing
    question', answer the right message by In-Reply-To, carry the growing References chain, and
    the second lead mail joins the same lead by In-Reply-To with only its new part filed."""
    async with services(base_env, tmp_path, outbox) as stack:
        await stack.mail(
            lead_mail(
                "Ana Lead <ana@example.org>",
                "Pricing question",
                "How much is the Home plan?",
                "<m1.ana@example.org>",
            )
        )
        [first] = await stack.sent(1)
        r1 = headers_of(first)
        assert r1["subject"] == "Re: Pricing question"
        assert r1["in-reply-to"] == "<m1.ana@example.org>"
        assert r1["references"] == "<m1.ana@example.org>"
        assert r1["auto-submitted"] == "auto-replied"
        await stack.mail(
            lead_mail(
                "Ana at work <ana.work@example.org>",
                "Re: Pricing question",
                "And is installation included?\n\nOn Mon, Acme Solar Sales wrote:\n> The Home...",
                "<m2.ana@example.org>",
                in_reply_to=r1["message-id"],
                references=f"<m1.ana@example.org> {r1['message-id']}",
            )
        )
        second = (await stack.sent(2))[1]
        r2 = headers_of(second)
        assert r2["subject"] == "Re: Pricing question"
        assert r2["in-reply-to"] == "<m2.ana@example.org>"
        assert r2["references"].split() == [
            "<m1.ana@example.org>",
            r1["message-id"],
            "<m2.ana@example.org>",
        ]
        assert "=?" not in r2["references"] and "=?" not in r2["list-unsubscribe"]
        rows = await stack.pool.fetch(
            "SELECT m.direction, m.body, m.provider_message_id, m.meta, l.email"
            " FROM messages m JOIN leads l ON l.id = m.lead_id ORDER BY m.created_at"
        )
        assert [r["email"] for r in rows] == ["ana@example.org"] * 4
        assert [r["direction"] for r in rows] == ["inbound", "outbound", "inbound", "outbound"]
        assert rows[2]["body"] == "And is installation included?"
        assert rows[2]["meta"]["from"] == "ana.work@example.org"
        assert rows[2]["meta"]["thread"]["via"] == r1["message-id"].strip("<>")
        assert rows[1]["provider_message_id"] == r1["message-id"].strip("<>")


async def test_an_out_of_office_is_filed_and_never_answered(
    base_env: dict[str, str], tmp_path: Path, outbox: tuple[Outbox, int]
) -> None:
    """An auto-reply to our answer is filed on the lead with its reason and gets no ai.engage
    job, so no answer goes out; the person's next mail is answered again."""
    async with services(base_env, tmp_path, outbox) as stack:
        await stack.mail(
            lead_mail(
                "Ana Lead <ana@example.org>", "Pricing question", "Price?", "<p1@example.org>"
            )
        )
        [first] = await stack.sent(1)
        ours = headers_of(first)["message-id"]
        await stack.mail(
            fixture("auto_gmail_vacation.eml", MESSAGE_ID=ours.strip("<>")), "ana@example.org"
        )
        await stack.mail(
            fixture("auto_exchange_oof.eml", MESSAGE_ID=ours.strip("<>")), "ana@example.org"
        )
        filed = await eventually(
            lambda: stack.pool.fetch(
                "SELECT meta->>'auto_reply' AS reason, job_id FROM messages"
                " WHERE direction = 'inbound' AND meta ? 'auto_reply' ORDER BY created_at"
            ),
            lambda rows: len(rows) == 2,
        )
        assert [r["reason"] for r in filed] == [
            "auto-submitted: auto-replied",
            "auto-submitted: auto-generated",
        ]
        assert all(r["job_id"] is None for r in filed)
        await stack.mail(
            lead_mail(
                "Ana Lead <ana@example.org>",
                "Re: Pricing question",
                "Back now: price?",
                "<p2@example.org>",
                in_reply_to=ours,
            )
        )
        sent = await stack.sent(2)
        assert headers_of(sent[1])["in-reply-to"] == "<p2@example.org>"
        jobs = await stack.pool.fetchval("SELECT count(*) FROM jobs WHERE task_name = 'ai.engage'")
        assert jobs == 2 and len(stack.outbox.received) == 2


async def test_a_bounce_suppresses_the_address_and_marks_the_message_undeliverable(
    base_env: dict[str, str], tmp_path: Path, outbox: tuple[Outbox, int]
) -> None:
    """A Gmail DSN for our answer suppresses the address, marks the message's delivery failed
    with an email.hard_bounce event, files no lead message, and changes nothing when the DSN is
    delivered again; a soft bounce is only counted."""
    async with services(base_env, tmp_path, outbox) as stack:
        await stack.mail(
            lead_mail("Nobody <nobody.here@gmail.com>", "Info", "Send info", "<b1@gmail.com>")
        )
        [first] = await stack.sent(1)
        ours = headers_of(first)["message-id"].strip("<>")
        # The SMTP server has the mail a moment before dispatch records it sent.
        await eventually(
            lambda: stack.pool.fetchval(
                "SELECT provider_message_id FROM messages WHERE direction = 'outbound'"
            )
        )
        dsn = fixture("dsn_gmail_hard.eml", MESSAGE_ID=ours)
        await stack.mail(dsn, "")
        await stack.mail(dsn, "")
        suppression = await eventually(
            lambda: stack.pool.fetchrow(
                "SELECT channel, address, scope FROM suppressions WHERE address = $1",
                "nobody.here@gmail.com",
            ),
            lambda row: row is not None,
        )
        assert tuple(suppression) == ("email", "nobody.here@gmail.com", "all")
        outbound = await stack.pool.fetchrow(
            "SELECT delivery_status, delivery_error FROM messages WHERE direction = 'outbound'"
        )
        assert outbound["delivery_status"] == "failed"
        assert "5.1.1" in outbound["delivery_error"]
        assert await stack.pool.fetchval("SELECT count(*) FROM email_bounces") == 1
        assert (
            await stack.pool.fetchval(
                "SELECT count(*) FROM events WHERE type = 'email.hard_bounce'"
            )
            == 1
        )
        assert (
            await stack.pool.fetchval("SELECT count(*) FROM messages WHERE direction = 'inbound'")
            == 1
        )
        soft = fixture("dsn_mailbox_full_soft.eml", MESSAGE_ID=ours).replace(
            b"full.box@example.com", b"nobody.here@gmail.com"
        )
        await stack.mail(soft, "")
        event = await eventually(
            lambda: stack.pool.fetchrow(
                "SELECT payload FROM events WHERE type = 'email.soft_bounce'"
            ),
            lambda row: row is not None,
        )
        assert event["payload"]["soft_bounces"] == 1


async def test_the_reply_breaker_stops_a_loop_with_another_bot(
    base_env: dict[str, str], tmp_path: Path, outbox: tuple[Outbox, int]
) -> None:
    """A sender that escapes the auto-reply checks and answers every answer gets at most
    REPLY_BREAKER_MAX replies in the window; then one lead.reply_breaker_open event is raised
    and later mails are filed unanswered."""
    async with services(base_env, tmp_path, outbox, reply_breaker_max=2) as stack:
        for n in range(4):
            await stack.mail(
                lead_mail(
                    "Helpdesk <help@bot.example>",
                    "Ticket",
                    f"Ticket update {n}",
                    f"<t{n}@bot.example>",
                )
            )
            await eventually(
                lambda n=n: stack.pool.fetchval(
                    "SELECT count(*) FROM jobs WHERE task_name = 'ai.engage'"
                    " AND status IN ('completed', 'dlq')"
                ),
                lambda done, n=n: done == n + 1,
            )
        assert len(stack.outbox.received) == 2
        events = await stack.pool.fetch(
            "SELECT payload FROM events WHERE type = 'lead.reply_breaker_open'"
        )
        assert len(events) == 1 and events[0]["payload"]["max"] == 2
        skipped = await stack.pool.fetch(
            "SELECT result FROM jobs WHERE task_name = 'ai.engage' ORDER BY created_at"
        )
        assert [("skipped" in (r["result"] or {})) for r in skipped] == [False, False, True, True]
