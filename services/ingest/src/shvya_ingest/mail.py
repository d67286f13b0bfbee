"""Inbound email, from the JSON webhook or the SMTP receiver, into the common filing path.

Both doors produce an `InboundEmail`; `file_email` turns it into one inbound message on the
email channel: the sender's address is the lead's identity, the Message-ID is the provider id
(so a redelivered mail is filed once), and the company is the one that registered a recipient
mailbox in `inbound_routes` (else the default company). A MIME message is read with the standard
library's `email` package; an HTML-only mail is reduced to its text.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from html.parser import HTMLParser
from typing import Any, Final

from shvya_ingest.api import Ingest
from shvya_ingest.inbound import Accepted
from shvya_ingest.phone import AddressError, normalise_email
from shvya_ingest.repository import InboundRow

CHANNEL: Final = "email"


class EmailError(ValueError):
    """The mail cannot be filed: no sender address, or nothing in it."""


@dataclass(frozen=True)
class InboundEmail:
    sender: str
    text: str
    message_id: str | None
    sender_name: str | None = None
    to: list[str] = field(default_factory=list)
    subject: str | None = None
    html: str | None = None
    in_reply_to: str | None = None


class _TextExtractor(HTMLParser):
    _BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def clean_message_id(value: str | None) -> str | None:
    """A Message-ID without its angle brackets, so both doors store the same id."""
    if value is None:
        return None
    cleaned = value.strip().strip("<>").strip()
    return cleaned[:256] or None


def parse_mime(
    raw: bytes, envelope_from: str | None = None, rcpt_tos: list[str] | None = None
) -> InboundEmail:
    """An RFC 5322 message as received over SMTP."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    sender, name = envelope_from or "", None
    from_header = message["from"]
    addresses: tuple[Address, ...] = getattr(from_header, "addresses", ()) if from_header else ()
    if addresses and addresses[0].addr_spec and "@" in addresses[0].addr_spec:
        sender, name = addresses[0].addr_spec, addresses[0].display_name or None
    to = [a.addr_spec for a in getattr(message["to"], "addresses", ()) if a.addr_spec]
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    text = str(text_part.get_content()) if text_part is not None else ""
    html = str(html_part.get_content()) if html_part is not None else None
    message_id = clean_message_id(str(message["message-id"] or "")) or (
        # No Message-ID: a digest of the bytes still makes a redelivery a duplicate.
        "sha256:" + hashlib.sha256(raw).hexdigest()
    )
    return InboundEmail(
        sender=sender,
        sender_name=name,
        to=to + [r for r in rcpt_tos or [] if r not in to],
        subject=str(message["subject"]) if message["subject"] is not None else None,
        text=text,
        html=html,
        message_id=message_id,
        in_reply_to=clean_message_id(str(message["in-reply-to"] or "")),
    )


async def file_email(
    ingest: Ingest, email: InboundEmail, company_id: uuid.UUID | None = None
) -> Accepted:
    """File one inbound email; raises EmailError when it has no usable sender or content."""
    try:
        address = normalise_email(email.sender)
    except AddressError as err:
        raise EmailError(f"sender: {err}") from err
    body = email.text.strip() or (html_to_text(email.html) if email.html else "")
    if not body and email.subject:
        body = email.subject.strip()
    if not body:
        raise EmailError("the email has no text, HTML or subject to file")
    if company_id is None:
        for recipient in email.to:
            company_id = await ingest.inbound.company_for(CHANNEL, recipient.strip().lower())
            if company_id is not None:
                break
    meta: dict[str, Any] = {"subject": email.subject, "to": email.to[:20]}
    if email.in_reply_to:
        meta["in_reply_to"] = email.in_reply_to
    row = InboundRow(
        address=address,
        text=body,
        contact_name=email.sender_name,
        provider_message_id=clean_message_id(email.message_id),
        meta=meta,
    )
    route = await ingest.route_for(company_id)
    [accepted] = await ingest.inbound.file(route, identity="email", channel=CHANNEL, rows=[row])
    return accepted
