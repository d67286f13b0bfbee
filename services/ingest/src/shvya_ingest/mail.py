"""Inbound email, from every door (the JSON webhook, SendGrid, Mailgun, Postmark, the SMTP
receiver, IMAP mailboxes), into the common filing path.

Each door produces an `InboundEmail`; `file_email` decides what it is and files it:

1. A delivery status notification (`bounces.py`) is no lead message: it suppresses a hard-bounced
   address, counts a soft bounce, and marks our message undeliverable.
2. The conversation: a mail whose In-Reply-To or References names one of our messages belongs
   to that message's lead and company, whatever address it came from; otherwise the sender's
   address is the lead, in the company that registered a recipient mailbox in `inbound_routes`
   (else the default company).
3. An automatic mail (`autoreply.py`: out-of-office, another bot, a list) is filed without an
   AI reply, so no mail loop starts.
4. The body filed is the new part of the reply (`replies.py`); attachments are stored in the
   media store (content-addressed) and listed in the message's meta.

The Message-ID is the provider id, so a redelivered mail is filed once; its threading headers
and subject are kept in meta for dispatch to answer in the same thread. Addresses are accepted
in every RFC 5322 form (`Name <addr>`, quoted names, encoded-word names).

Text is filed as well as it can be read: a part in an unknown or invalid charset
(`unknown-8bit`, a misspelt name) is read as UTF-8, else windows-1252; undecodable header bytes
likewise; NUL characters are dropped (PostgreSQL stores none). A message that still cannot be
parsed raises `UnparseableEmail`, an `EmailError`, which every door answers as mail that can
never be filed, so one bad mail never holds up the next.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from html.parser import HTMLParser
from typing import Any, Final, Literal

import structlog

from shvya_common.emailfacts import bare_message_id
from shvya_ingest.api import Ingest
from shvya_ingest.autoreply import auto_reply_reason
from shvya_ingest.bounces import Bounce, parse_bounce
from shvya_ingest.inbound import Accepted
from shvya_ingest.mail_repository import MailRepository, ThreadMatch
from shvya_ingest.phone import AddressError, normalise_email
from shvya_ingest.replies import new_part
from shvya_ingest.repository import InboundRow
from shvya_ingest.webhooks import without_nul

CHANNEL: Final = "email"
MAX_ATTACHMENTS = 20
MAX_REFERENCES = 50

log = structlog.get_logger(__name__)


class EmailError(ValueError):
    """The mail cannot be filed: no sender address, or nothing in it."""


class UnparseableEmail(EmailError):
    """The bytes cannot be read as a message at all (`parse_mime`)."""


@dataclass(frozen=True)
class Attachment:
    filename: str | None
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class InboundEmail:
    """One received email, whichever door it came in by. `mime` is the whole message when the
    door had it (SMTP, IMAP, raw-MIME webhooks); `headers` are its top-level headers."""

    sender: str
    text: str
    message_id: str | None
    sender_name: str | None = None
    to: list[str] = field(default_factory=list)
    subject: str | None = None
    html: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    # The SMTP envelope sender: "" for a null return path, None when the door does not say.
    envelope_from: str | None = None
    mime: Message | None = None
    source: str = "webhook"


@dataclass(frozen=True)
class MailOutcome:
    """What filing did: a lead message (answered or not), or a bounce."""

    kind: Literal["filed", "auto_reply", "bounce"]
    accepted: Accepted | None = None
    bounce: Bounce | None = None
    bounces_recorded: int = 0
    reason: str | None = None


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
    """A Message-ID without its angle brackets, so every door stores the same id."""
    return bare_message_id(value)


def parse_addresses(value: str | None) -> list[tuple[str, str | None]]:
    """(address, display name) for each mailbox of an RFC 5322 address list: `Name <addr>`,
    `"Last, First" <addr>`, `=?utf-8?q?…?= <addr>` or a bare address."""
    if not value or not value.strip():
        return []
    header = policy.default.header_factory("to", value)
    out: list[tuple[str, str | None]] = []
    for address in getattr(header, "addresses", ()):
        if address.addr_spec and "@" in address.addr_spec:
            out.append((address.addr_spec, address.display_name or None))
    if not out and "@" in value and "<" not in value:
        out.append((value.strip(), None))
    return out


def parse_address(value: str | None) -> tuple[str, str | None]:
    """The first mailbox of `value`; raises EmailError when there is none."""
    found = parse_addresses(value)
    if not found:
        raise EmailError(f"sender: {value!r} is not an email address")
    return found[0]


def message_ids(value: str | None) -> list[str]:
    """The bare ids of a References / In-Reply-To header value."""
    if not value:
        return []
    ids: list[str] = []
    for token in str(value).replace(">", "> ").split():
        cleaned = bare_message_id(token)
        if cleaned and "@" in cleaned and cleaned not in ids:
            ids.append(cleaned)
    return ids[:MAX_REFERENCES]


def first_message_id(value: str | None) -> str | None:
    """The bare id of an In-Reply-To value (its first id)."""
    ids = message_ids(value)
    return ids[0] if ids else None


def storable(text: str) -> str:
    """`text` as PostgreSQL can store it: without NUL (`without_nul`), and without the lone
    surrogates the parser leaves for header bytes it could not decode (those bytes are read as
    UTF-8, else windows-1252)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            text = _decoded_bytes(text.encode("utf-8", "surrogateescape"), None)
        except UnicodeEncodeError:  # a surrogate that stands for no byte
            text = text.encode("utf-8", "replace").decode("utf-8")
    return str(without_nul(text))


def _optional(text: str | None) -> str | None:
    return None if text is None else storable(text)


def storable_email(email: InboundEmail) -> InboundEmail:
    """The email with every text field `storable`, whichever door it came in by."""
    return dataclasses.replace(
        email,
        sender=storable(email.sender),
        text=storable(email.text),
        message_id=_optional(email.message_id),
        sender_name=_optional(email.sender_name),
        to=[storable(a) for a in email.to],
        subject=_optional(email.subject),
        html=_optional(email.html),
        in_reply_to=_optional(email.in_reply_to),
        references=[storable(r) for r in email.references],
        headers=[(storable(n), storable(v)) for n, v in email.headers],
        attachments=[
            dataclasses.replace(
                a, filename=_optional(a.filename), content_type=storable(a.content_type)
            )
            for a in email.attachments
        ],
        envelope_from=_optional(email.envelope_from),
    )


def _decoded_bytes(data: bytes, charset: str | None) -> str:
    """`data` read in `charset`; an unknown or invalid charset (`unknown-8bit`, a misspelt or
    empty name, a codec that is no text encoding) or none is read as UTF-8, else as
    windows-1252, so no byte stops the mail being filed."""
    if charset and charset not in ("us-ascii", "ascii"):
        try:
            return data.decode(charset, errors="replace")
        except (LookupError, ValueError, TypeError):
            pass  # charset names no text codec we have
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("windows-1252", errors="replace")


def part_text(part: Message) -> str:
    """The decoded text of a text/* part (its transfer encoding undone, then its charset)."""
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    try:
        charset = part.get_content_charset()
    except Exception:  # a charset parameter the parser cannot read
        charset = None
    return storable(_decoded_bytes(data, charset))


def _header_value(message: Message, name: str, raw: str) -> str:
    """A header's decoded value; its raw text when the parser fails on it (the standard
    library's header parser raises IndexError on some malformed Message-IDs)."""
    try:
        return str(message.policy.header_fetch_parse(name, raw))
    except Exception:
        return storable(raw)


def _header(message: Message, name: str) -> str | None:
    """The first `name` header's value, or None."""
    for key, raw in message.raw_items():
        if key.lower() == name:
            return _header_value(message, key, raw)
    return None


def _addresses(message: Message, name: str) -> tuple[Address, ...]:
    try:
        return tuple(getattr(message[name], "addresses", ()) or ())
    except Exception:  # an address header the parser fails on: no address from it
        return ()


def header_pairs(message: Message) -> list[tuple[str, str]]:
    return [(name, _header_value(message, name, raw)) for name, raw in message.raw_items()]


def _attachments(message: EmailMessage) -> list[Attachment]:
    found: list[Attachment] = []
    for part in message.iter_attachments():
        if len(found) >= MAX_ATTACHMENTS:
            break
        if part.get_content_maintype() == "multipart":
            continue
        data = part.get_payload(decode=True)
        if isinstance(data, bytes) and data:
            try:
                filename = part.get_filename()
            except Exception:  # a filename parameter the parser cannot read: kept unnamed
                filename = None
            found.append(Attachment(filename, part.get_content_type(), data))
    return found


def parse_mime(
    raw: bytes,
    envelope_from: str | None = None,
    rcpt_tos: list[str] | None = None,
    source: str = "smtp",
) -> InboundEmail:
    """An RFC 5322 message as received over SMTP or read from a mailbox. Text in an unknown
    charset is decoded as well as it can be; raises `UnparseableEmail` when the message still
    cannot be read."""
    try:
        return storable_email(_parse_mime(raw, envelope_from, rcpt_tos, source))
    except EmailError:
        raise
    except Exception as err:
        reason = f"the message cannot be parsed: {type(err).__name__}: {err}"
        raise UnparseableEmail(reason[:300]) from err


def _parse_mime(
    raw: bytes, envelope_from: str | None, rcpt_tos: list[str] | None, source: str
) -> InboundEmail:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    sender, name = envelope_from or "", None
    addresses = _addresses(message, "from")
    if addresses and addresses[0].addr_spec and "@" in addresses[0].addr_spec:
        sender, name = addresses[0].addr_spec, addresses[0].display_name or None
    to = [a.addr_spec for a in _addresses(message, "to") if a.addr_spec]
    text, html = "", None
    if message.get_content_maintype() in ("text", "multipart"):
        text_part = message.get_body(preferencelist=("plain",))
        html_part = message.get_body(preferencelist=("html",))
        text = part_text(text_part) if text_part is not None else ""
        html = part_text(html_part) if html_part is not None else None
    message_id = clean_message_id(_header(message, "message-id") or "") or (
        # No Message-ID: a digest of the bytes still makes a redelivery a duplicate.
        "sha256:" + hashlib.sha256(raw).hexdigest()
    )
    return InboundEmail(
        sender=sender,
        sender_name=name,
        to=to + [r for r in rcpt_tos or [] if r not in to],
        subject=_header(message, "subject"),
        text=text,
        html=html,
        message_id=message_id,
        in_reply_to=first_message_id(_header(message, "in-reply-to") or ""),
        references=message_ids(_header(message, "references") or ""),
        headers=header_pairs(message),
        attachments=_attachments(message),
        envelope_from=envelope_from,
        mime=message,
        source=source,
    )


def as_message(email: InboundEmail) -> Message:
    """The message to look for a bounce in: the original MIME, or one rebuilt from what a
    parsing webhook posted (its headers, text, and message/* or text/* attachments such as
    message/delivery-status, which the parser then reads into header blocks)."""
    if email.mime is not None:
        return email.mime
    skip = ("content-type", "content-transfer-encoding", "mime-version")
    head = [
        f"{name}: {' '.join(value.split())}"
        for name, value in email.headers
        if name.lower() not in skip and name.strip()
    ]
    names = {name.lower() for name, _ in email.headers}
    if "from" not in names:
        head.append(f"From: {email.sender}")
    if "subject" not in names and email.subject:
        head.append(f"Subject: {' '.join(email.subject.split())}")
    original_type = next((v for n, v in email.headers if n.lower() == "content-type"), "")
    boundary = f"shvya-{uuid.uuid4().hex}"
    outer = "multipart/mixed"
    if "multipart/report" in original_type.lower():
        outer = "multipart/report; report-type=delivery-status"
    head += ["MIME-Version: 1.0", f'Content-Type: {outer}; boundary="{boundary}"']
    parts = [
        b'Content-Type: text/plain; charset="utf-8"\r\n\r\n'
        + (email.text or html_to_text(email.html or "")).encode("utf-8", "replace")
    ]
    for attachment in email.attachments:
        if attachment.content_type.split("/")[0] in ("message", "text"):
            parts.append(
                f"Content-Type: {attachment.content_type}\r\n\r\n".encode() + attachment.data
            )
    delimiter = f"\r\n--{boundary}\r\n".encode()
    raw = (
        "\r\n".join(head).encode("utf-8", "replace")
        + b"\r\n"
        + delimiter
        + delimiter.join(parts)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return BytesParser(policy=policy.compat32).parsebytes(raw)


async def file_email(
    ingest: Ingest, email: InboundEmail, company_id: uuid.UUID | None = None
) -> MailOutcome:
    """File one inbound email; raises EmailError when it has no usable sender or content."""
    email = storable_email(email)
    repo = MailRepository(ingest.plat.pool)
    sender = email.sender.strip()
    try:
        bounce = parse_bounce(as_message(email), sender=sender, envelope_from=email.envelope_from)
    except Exception as err:  # a report too malformed to read: a bad item, never a retry loop
        raise UnparseableEmail(f"the delivery report cannot be read: {type(err).__name__}") from err
    if bounce is not None:
        recorded = await _record_bounce(ingest, repo, email, bounce, company_id)
        return MailOutcome("bounce", bounce=bounce, bounces_recorded=recorded)
    try:
        address = normalise_email(sender)
    except AddressError as err:
        raise EmailError(f"sender: {err}") from err
    auto = auto_reply_reason(
        email.headers, subject=email.subject, sender=address, envelope_from=email.envelope_from
    )
    references = [r for r in [email.in_reply_to, *reversed(email.references)] if r]
    thread = await repo.find_thread(list(dict.fromkeys(references)), company_id)
    if company_id is None:
        company_id = thread.company_id if thread is not None else await _routed(ingest, email)
    route = await ingest.route_for(company_id)
    text, stripped = new_part(email.text) if email.text.strip() else ("", False)
    body = text or (new_part(html_to_text(email.html))[0] if email.html else "")
    if not body and email.subject:
        body = email.subject.strip()
    attachments = await _store_attachments(ingest, route.company_id, email.attachments)
    if not body and attachments:
        body = "[attachment] " + ", ".join(a.get("filename") or a["mime_type"] for a in attachments)
    if not body:
        raise EmailError("the email has no text, HTML or subject to file")
    meta = _meta(email, thread, stripped, auto, attachments)
    lead_address = address
    contact_name = email.sender_name
    if thread is not None and thread.lead_email and thread.lead_email.lower() != address.lower():
        # Someone else in the thread (a colleague, an alias): the conversation's lead, not a
        # new lead, and not their name on it.
        lead_address, contact_name = thread.lead_email, None
        meta["from"] = address
    row = InboundRow(
        address=lead_address,
        text=body,
        contact_name=contact_name,
        provider_message_id=clean_message_id(email.message_id),
        meta=meta,
        engage=auto is None,
    )
    [accepted] = await ingest.inbound.file(route, identity="email", channel=CHANNEL, rows=[row])
    if auto is not None:
        log.info(
            "email_auto_reply_filed",
            reason=auto,
            message_id=str(accepted.message_id),
            created=accepted.created,
        )
    return MailOutcome("auto_reply" if auto else "filed", accepted=accepted, reason=auto)


async def _routed(ingest: Ingest, email: InboundEmail) -> uuid.UUID | None:
    for recipient in email.to:
        company_id = await ingest.inbound.company_for(CHANNEL, recipient.strip().lower())
        if company_id is not None:
            return company_id
    return None


def _meta(
    email: InboundEmail,
    thread: ThreadMatch | None,
    stripped: bool,
    auto: str | None,
    attachments: list[dict[str, Any]],
) -> dict[str, Any]:
    meta: dict[str, Any] = {"subject": email.subject, "to": email.to[:20], "source": email.source}
    message_id = clean_message_id(email.message_id)
    if message_id and not message_id.startswith("sha256:"):
        meta["message_id"] = message_id
    if email.in_reply_to:
        meta["in_reply_to"] = email.in_reply_to
    if email.references:
        meta["references"] = email.references[-20:]
    if thread is not None:
        meta["thread"] = {"message_id": str(thread.message_id), "via": thread.reference}
    if stripped:
        meta["quoted_text_removed"] = True
    if auto is not None:
        meta["auto_reply"] = auto
    if attachments:
        meta["attachments"] = attachments
    return meta


async def _store_attachments(
    ingest: Ingest, company_id: uuid.UUID, attachments: list[Attachment]
) -> list[dict[str, Any]]:
    """Each attachment in the media store (content-addressed, so a redelivery stores nothing
    new), as the meta entries that point at it."""
    if not attachments:
        return []
    limit = ingest.settings.email_attachment_max_bytes
    stored: list[dict[str, Any]] = []
    for attachment in attachments[:MAX_ATTACHMENTS]:
        entry: dict[str, Any] = {
            "filename": (attachment.filename or "")[:200] or None,
            "mime_type": attachment.content_type,
            "size": len(attachment.data),
        }
        if len(attachment.data) > limit:
            entry["skipped"] = f"larger than EMAIL_ATTACHMENT_MAX_BYTES ({limit})"
        else:
            media = await ingest.media.put(company_id, attachment.data, attachment.content_type)
            entry.update(key=media.key, sha256=media.sha256)
        stored.append(entry)
    return stored


async def _record_bounce(
    ingest: Ingest,
    repo: MailRepository,
    email: InboundEmail,
    bounce: Bounce,
    company_id: uuid.UUID | None,
) -> int:
    dsn_id = clean_message_id(email.message_id) or "unknown"
    original = _optional(bounce.original_message_id)
    recorded = 0
    for found in bounce.recipients:
        # What the report says is read from its parts as written: storable before it is stored.
        recipient = dataclasses.replace(
            found,
            address=storable(found.address),
            status=_optional(found.status),
            diagnostic=_optional(found.diagnostic),
        )
        target = await repo.bounce_target(original, recipient.address, company_id)
        if target is None:
            log.info("email_bounce_unmatched", kind=recipient.kind, status=recipient.status)
            continue
        payload = await repo.record_bounce(
            target,
            address=recipient.address,
            kind=recipient.kind,
            status=recipient.status,
            diagnostic=recipient.diagnostic,
            dsn_message_id=dsn_id,
        )
        if payload is not None:
            recorded += 1
            log.info(
                f"email_{recipient.kind}_bounce",
                company_id=str(target.company_id),
                lead_id=str(target.lead_id) if target.lead_id else None,
                status=recipient.status,
            )
    if not bounce.recipients:
        log.info("email_delivery_report_ignored", source=email.source)
    return recorded
