"""Delivery status notifications: which of our recipients bounced, how hard, and which of our
messages it was.

A bounce is recognised by its form (RFC 3462 `multipart/report; report-type=delivery-status`,
Exim's `X-Failed-Recipients`) or its sender (mailer-daemon, postmaster, a null return path with
a bounce subject). `flufl.bounce` (Mailman's detectors) then finds the failed recipients, both in
RFC 3464 reports and in the non-standard forms of Yahoo, Exim, qmail, Postfix, Exchange and
others, split into temporary and permanent failures. The RFC 3464 per-recipient fields (Status,
Diagnostic-Code) and the original Message-ID (from the returned `message/rfc822` or
`text/rfc822-headers` part, else from a quoted `Message-ID:` line) are read here with the
standard library, since flufl.bounce reports addresses only.

A permanent failure is hard (suppress the address) when its status says the mailbox is bad
(5.1.x, 5.2.1), or when no status is given at all (a Yahoo or qmail "no such user" text); a
permanent failure for policy (5.7.x) or a full mailbox (5.2.2), and every temporary failure
(Action: delayed, 4.x.x), is soft: counted, never suppressed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import message_from_string, policy
from email.message import Message
from typing import Literal

from flufl.bounce import all_failures

from shvya_common.emailfacts import bare_message_id, enhanced_status, is_hard_bounce

_BOUNCE_LOCAL = re.compile(r"^(?:mailer-?daemon|postmaster|mail-?delivery(?:-subsystem)?)$", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (?:status notification|failure|has failed)|mail delivery failed"
    r"|returned mail|failure notice|could not be delivered|delivery incomplete"
    r"|nondeliverable|non-delivery|rejected:",
    re.I,
)
_QUOTED_MESSAGE_ID = re.compile(r"^\s*message-id:\s*(<[^<>\s]+>)", re.I | re.M)
# Free-text reasons that are about the sender or a full mailbox, not a bad address.
_SOFT_TEXT = re.compile(
    r"quota|mailbox (?:is )?full|over ?quota|insufficient storage|spam|blocked|blacklist"
    r"|block ?list|policy|reputation|rate limit|too many|temporar|try again",
    re.I,
)


@dataclass(frozen=True)
class BouncedRecipient:
    address: str
    kind: Literal["hard", "soft"]
    status: str | None = None
    diagnostic: str | None = None


@dataclass(frozen=True)
class Bounce:
    """What a DSN says. `recipients` may be empty: a report that names no failure (a success
    notice, a delay report without addresses) is still no lead message."""

    recipients: list[BouncedRecipient] = field(default_factory=list)
    original_message_id: str | None = None


def looks_like_bounce(msg: Message, sender: str, envelope_from: str | None) -> bool:
    ctype = msg.get_content_type()
    if ctype == "multipart/report" and (
        str(msg.get_param("report-type", "")).lower() == "delivery-status"
    ):
        return True
    if msg.get("x-failed-recipients"):
        return True
    local = sender.rpartition("@")[0]
    if local and _BOUNCE_LOCAL.match(local):
        return True
    subject = str(msg.get("subject", ""))
    null_sender = envelope_from == "" or str(msg.get("return-path", "")).strip() == "<>"
    return null_sender and bool(_BOUNCE_SUBJECT.search(subject))


def _decode(address: bytes) -> str:
    return address.decode("ascii", "replace").strip().strip("<>")


def _status_blocks(msg: Message) -> dict[str, tuple[str | None, str | None]]:
    """address (lower-cased) -> (Status, Diagnostic-Code) from every delivery-status part."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        blocks = payload if isinstance(payload, list) else []
        for block in blocks:
            if not isinstance(block, Message):
                continue
            recipient = block.get("final-recipient") or block.get("original-recipient")
            if not recipient:
                continue
            address = str(recipient).split(";", 1)[-1].strip().strip("<>").lower()
            status = str(block.get("status", "")).strip() or None
            diagnostic = block.get("diagnostic-code")
            text = " ".join(str(diagnostic).split()) if diagnostic else None
            if text and ";" in text[:12]:
                text = text.split(";", 1)[1].strip()
            found[address] = (status, text)
    return found


def _body_text(msg: Message) -> str:
    parts: list[str] = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    parts.append(payload.decode(charset, "replace"))
                except (LookupError, ValueError):  # unknown-8bit, a misspelt charset: UTF-8
                    parts.append(payload.decode("utf-8", "replace"))
    return "\n".join(parts)


def original_message_id(msg: Message, body: str) -> str | None:
    """The Message-ID of the mail that bounced, from the part the MTA returned."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message):
                # Read raw: the standard library's parser raises on some malformed Message-IDs.
                raw_id = next((v for k, v in inner.raw_items() if k.lower() == "message-id"), None)
                if bare_message_id(raw_id):
                    return bare_message_id(raw_id)
        elif ctype in ("text/rfc822-headers", "text/global-headers"):
            raw = part.get_payload(decode=True)
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            headers = message_from_string(text, policy=policy.compat32)
            if headers.get("message-id"):
                return bare_message_id(str(headers["message-id"]))
    quoted = _QUOTED_MESSAGE_ID.search(body)
    return bare_message_id(quoted.group(1)) if quoted else None


def _near(body: str, address: str) -> str | None:
    """The diagnostic line of a non-standard bounce: the first lines after the address."""
    at = body.lower().find(address.lower())
    if at < 0:
        return None
    window = " ".join(body[at : at + 400].split())
    return window[:300] or None


def parse_bounce(msg: Message, *, sender: str, envelope_from: str | None) -> Bounce | None:
    """The bounce this message reports, or None when it is not a bounce."""
    if not looks_like_bounce(msg, sender, envelope_from):
        return None
    temporary, permanent = all_failures(msg)
    blocks = _status_blocks(msg)
    body = _body_text(msg)
    recipients: list[BouncedRecipient] = []
    seen: set[str] = set()
    for raw, is_permanent in [(a, True) for a in sorted(permanent)] + [
        (a, False) for a in sorted(temporary)
    ]:
        address = _decode(raw)
        if not address or "@" not in address or address.lower() in seen:
            continue
        seen.add(address.lower())
        status, diagnostic = blocks.get(address.lower(), (None, None))
        diagnostic = diagnostic or _near(body, address)
        status = status or (enhanced_status(diagnostic) if diagnostic else None)
        if not is_permanent:
            hard = False
        elif status is not None:
            hard = is_hard_bounce(None, status)
        else:
            # A permanent failure in free text: the mailbox's fault unless it says otherwise.
            hard = not _SOFT_TEXT.search(diagnostic or "")
        recipients.append(BouncedRecipient(address, "hard" if hard else "soft", status, diagnostic))
    return Bounce(recipients, original_message_id(msg, body))
