"""What both sides of email agree on: the form of SHVYA's own Message-IDs, and what an RFC 3463
enhanced status code (or a bare SMTP reply code) says about the recipient's mailbox.

Dispatch writes every outbound Message-ID as `<shvya.<message uuid hex>@<domain>>`, derived from
the outbound message's id, so ingest can tie a reply or a bounce to its message even when the
send's outcome was never recorded (a send left `unknown`). A retried send keeps its Message-ID,
so a receiver that got the first copy can tell the second is the same message.

A hard bounce is the mailbox's fault and suppresses the address: 5.1.x (bad mailbox, bad
domain, null MX) and 5.2.1 (mailbox disabled), or, with no enhanced code, 550/551/553. Policy
refusals (5.7.x: spam, reputation, relaying) and full mailboxes (5.2.2, 4.x.x) are soft: they
say nothing about the address.
"""

from __future__ import annotations

import re
import uuid

_OUR_ID = re.compile(r"^<?shvya\.([0-9a-f]{32})@[^<>@\s]+>?$", re.IGNORECASE)
_ENHANCED_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def outbound_message_id(message_id: uuid.UUID, domain: str) -> str:
    """The Message-ID header value (with its angle brackets) of outbound message `message_id`."""
    return f"<shvya.{message_id.hex}@{domain}>"


def our_message_uuid(value: str) -> uuid.UUID | None:
    """The outbound message id inside one of our Message-IDs, or None for anyone else's."""
    match = _OUR_ID.match(value.strip())
    return uuid.UUID(match.group(1)) if match else None


def bare_message_id(value: str | None) -> str | None:
    """A Message-ID without angle brackets or surrounding space (how every door stores it)."""
    if value is None:
        return None
    cleaned = value.strip().strip("<>").strip()
    return cleaned[:256] or None


def enhanced_status(text: str) -> str | None:
    """The first RFC 3463 status code (e.g. '5.1.1') in `text`, if any."""
    match = _ENHANCED_STATUS.search(text)
    return ".".join(match.groups()) if match else None


def is_hard_bounce(code: int | None, message: str) -> bool:
    """A permanent refusal that says the mailbox itself is bad (see the module docstring)."""
    status = enhanced_status(message)
    if status is not None:
        klass, subject, detail = status.split(".")
        return klass == "5" and (subject == "1" or (subject, detail) == ("2", "1"))
    return code in (550, 551, 553)
