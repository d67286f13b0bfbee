"""Headers written for mailbox providers, not for Python: the generator policy that keeps
structured headers raw, and the threading headers of a reply.

Python's email policy encodes a header it cannot fold at whitespace as RFC 2047 encoded words,
which turns `List-Unsubscribe: <https://…>` into `=?utf-8?q?=3Chttps=3A//…?=`. Mailbox providers
read List-Unsubscribe, Message-ID, In-Reply-To and References raw, so an encoded word breaks
one-click unsubscribe and threading. `MAIL_POLICY` therefore folds every ASCII header only at
the whitespace already in its value (RFC 5322 §2.2.3: a fold is CRLF before existing WSP), at
78 characters where it can, and never beyond the 998-character line limit. Non-ASCII values
(a subject or a display name in another script) keep Python's RFC 2047 encoding, which is where
RFC 2047 allows encoded words.

A reply threads (RFC 5322 §3.6.4): `In-Reply-To` is the parent's Message-ID and `References` is
the parent's References (or its In-Reply-To) followed by the parent's Message-ID; the subject is
`Re: ` and the parent's subject without its own reply prefixes, so a long exchange never reads
`Re: Re: Re:`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.policy import EmailPolicy
from typing import Any

SOFT_LIMIT = 78
HARD_LIMIT = 998
# RFC 5322 keeps References unbounded, but MTAs refuse huge headers: keep the thread's root
# and its most recent ancestors, as mail clients do.
MAX_REFERENCES = 20
# Reply (and forward-reply) prefixes in the languages mail clients use: "Re:", "RE[2]:",
# "AW:" (de), "SV:" (da, no, sv), "VS:" (fi), "Antw:" (nl), "Odp:" (pl), "Res:" (pt), "R:" (it).
_REPLY_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|odp|res|r|wg)\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)
_MSGID = re.compile(r"<[^<>\s]+>")


class HeaderTooLong(ValueError):
    """A header has a token that cannot fit in one line (998 characters)."""


def fold_raw(name: str, value: str) -> str:
    """`Name: value` folded only at existing whitespace, with CRLF line ends."""
    words = " ".join(value.split()).split(" ")
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if not word:
            continue
        candidate = f"{line} {word}"
        if len(candidate) <= SOFT_LIMIT or line.strip() in ("", f"{name}:"):
            line = candidate
        else:
            lines.append(line)
            line = f" {word}"
        if len(line) > HARD_LIMIT:
            raise HeaderTooLong(f"header {name} has a token longer than {HARD_LIMIT} characters")
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


class RawHeaderPolicy(EmailPolicy):
    """EmailPolicy that writes ASCII headers raw (see the module docstring)."""

    def _raw(self, name: str, value: Any) -> str | None:
        text = str(value)
        if not text.isascii() or "\n" in text or "\r" in text:
            return None
        return fold_raw(name, text)

    def fold(self, name: str, value: Any) -> str:
        raw = self._raw(name, value)
        if raw is None:
            folded: str = super().fold(name, value)
            return folded
        return raw.replace("\r\n", self.linesep)

    def fold_binary(self, name: str, value: Any) -> bytes:
        raw = self._raw(name, value)
        if raw is None:
            binary: bytes = super().fold_binary(name, value)
            return binary
        return raw.replace("\r\n", self.linesep).encode("ascii")


MAIL_POLICY = RawHeaderPolicy(linesep="\r\n", max_line_length=SOFT_LIMIT)


def reply_subject(parent_subject: str | None) -> str | None:
    """`Re: <subject>` with any earlier reply prefixes dropped; None without a subject."""
    if parent_subject is None:
        return None
    base = _REPLY_PREFIX.sub("", " ".join(parent_subject.split()))
    return f"Re: {base}" if base else None


def message_ids(value: str | Sequence[str] | None) -> list[str]:
    """The `<id>` tokens of a References / In-Reply-To value (or of a list of ids)."""
    if value is None:
        return []
    if isinstance(value, str):
        return _MSGID.findall(value)
    out: list[str] = []
    for item in value:
        item = item.strip()
        if not item:
            continue
        out.extend(_MSGID.findall(item) or [f"<{item.strip('<>')}>"])
    return out


def thread_references(
    parent_id: str, parent_references: Sequence[str], parent_in_reply_to: str | None
) -> list[str]:
    """The References of a reply to the parent (RFC 5322 §3.6.4), trimmed to MAX_REFERENCES."""
    chain = message_ids(parent_references) or message_ids(parent_in_reply_to)[:1]
    chain = [ref for ref in chain if ref != parent_id] + [parent_id]
    if len(chain) > MAX_REFERENCES:
        chain = chain[:1] + chain[-(MAX_REFERENCES - 1) :]
    return chain
