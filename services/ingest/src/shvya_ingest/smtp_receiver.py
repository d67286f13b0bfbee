"""An optional built-in SMTP server (aiosmtpd) for self-hosters: point an MX record (or a relay)
at it, and every received mail is filed as an inbound email through the common path.

It runs on ingest's own event loop, started and stopped by the FastAPI lifespan when
SMTP_RECEIVER_ENABLED is set. It only receives; it never relays. The SMTP reply tells the sending
server what to do: 250 when filed (or already filed), 451 (try later) when the database or queue
is down, 550 when the mail has no sender or content to file or cannot be parsed at all (a
permanent refusal, so the sending server bounces it instead of retrying it for days).

Reachable from the internet it is an open door into the CRM, so each recipient is checked at
RCPT: an address some company registered (an email account's `inbound_address`, routed to that
company) or one at a domain of SMTP_RECEIVER_DOMAINS (filed into the default company) is taken;
any other gets 550 5.1.1 and, with no recipient left, the mail is never received. Only on a
loopback bind with SMTP_RECEIVER_DOMAINS unset (the embedded default, fed by a local relay) is
every recipient taken, as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from shvya_ingest.api import OUTAGE_ERRORS, Ingest
from shvya_ingest.mail import CHANNEL, EmailError, file_email, parse_mime
from shvya_ingest.settings import is_loopback

log = structlog.get_logger(__name__)


class InboundMailHandler:
    """aiosmtpd handler: `handle_DATA` files the message and answers with an SMTP status."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        settings = ingest.settings
        self.domains = frozenset(d.lower() for d in settings.smtp_receiver_domains)
        self.open = not self.domains and is_loopback(settings.smtp_receiver_host)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Take only recipients this platform receives for (see the module's doc)."""
        recipient = address.strip().lower()
        if not self.open and recipient.rpartition("@")[2] not in self.domains:
            try:
                routed = await self.ingest.inbound.company_for(CHANNEL, recipient)
            except OUTAGE_ERRORS as err:
                log.warning("smtp_rcpt_deferred", error=type(err).__name__)
                return "451 4.3.0 Temporarily unable to check the recipient; try again later"
            if routed is None:
                log.info("smtp_rcpt_refused", domain=recipient.rpartition("@")[2][:100])
                return "550 5.1.1 No mailbox here by that name"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            email = parse_mime(raw, envelope.mail_from, list(envelope.rcpt_tos))
            outcome = await file_email(self.ingest, email)
        except EmailError as err:
            log.info("smtp_mail_refused", reason=str(err))
            # One reply line: no CR/LF from the reason may end it early.
            return f"550 5.6.0 Cannot file this message: {' '.join(str(err).split())[:400]}"
        except OUTAGE_ERRORS as err:
            log.warning("smtp_mail_deferred", error=type(err).__name__)
            return "451 4.3.0 Temporarily unable to accept the message; try again later"
        except Exception:
            # The sender keeps the mail and retries; a bug here must not lose it.
            log.exception("smtp_mail_failed")
            return "451 4.3.0 Temporarily unable to accept the message; try again later"
        accepted = outcome.accepted
        if accepted is None:
            log.info("smtp_mail_bounce", recorded=outcome.bounces_recorded)
        else:
            log.info(
                "smtp_mail_filed" if accepted.created else "smtp_mail_duplicate",
                message_id=str(accepted.message_id),
                kind=outcome.kind,
            )
        return "250 2.0.0 OK"


async def start_smtp_receiver(ingest: Ingest) -> asyncio.AbstractServer:
    """Listen on SMTP_RECEIVER_HOST:SMTP_RECEIVER_PORT on the running loop; the caller closes it."""
    settings = ingest.settings
    handler = InboundMailHandler(ingest)
    loop = asyncio.get_running_loop()

    def protocol() -> Any:
        return SMTP(
            handler,
            hostname=settings.smtp_receiver_hostname,
            data_size_limit=settings.smtp_receiver_max_bytes,
            enable_SMTPUTF8=True,
            ident="SHVYA inbound mail",
            loop=loop,
        )

    server = await loop.create_server(
        protocol, host=settings.smtp_receiver_host, port=settings.smtp_receiver_port
    )
    port = server.sockets[0].getsockname()[1] if server.sockets else settings.smtp_receiver_port
    log.info("smtp_receiver_listening", host=settings.smtp_receiver_host, port=port)
    return server
