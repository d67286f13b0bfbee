"""The new part of an email reply: what the lead wrote this time, without the quoted history,
the "On … wrote:" line above it or the signature block below it, so the AI answers what was said
now (and the conversation history is not stored twice).

`mail-parser-reply` (a maintained port of GitHub's email_reply_parser with many languages) finds
the headers that mail clients put above quoted text (Gmail's "On … wrote:", Outlook's
"From: … Sent: …", and their translations). Two leftovers it does not handle are cleaned here:
Outlook's underscore separator line, and bottom-of-message `>`-quoted blocks with the attribution
line introducing them.
"""

from __future__ import annotations

import re

from mailparser_reply import EmailReplyParser

LANGUAGES = ["en", "de", "fr", "es", "it", "nl", "pl", "sv", "da", "cs", "ja", "ko", "zh"]
_PARSER = EmailReplyParser(languages=LANGUAGES)
_SEPARATOR = re.compile(
    r"^\s*(?:_{8,}|-{8,}|-{2,}\s*(?:original message|forwarded message).*)\s*$", re.I
)
_ATTRIBUTION = re.compile(
    r"^.{0,200}\b(?:wrote|schrieb|a écrit|escribió|escreveu|scrisse|schreef|skrev|napisał)\b"
    r".{0,200}:\s*$",
    re.I,
)


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def new_part(text: str) -> tuple[str, bool]:
    """(the reply's new text, whether anything was cut); the whole text when nothing is new."""
    original = text.replace("\r\n", "\n").strip()
    if not original:
        return "", False
    try:
        latest = _PARSER.parse_reply(original) or original
    except Exception:  # a reply parser bug must not lose the mail: keep it whole
        latest = original
    lines = _trim(latest.strip().split("\n"))
    if lines and _SEPARATOR.match(lines[-1]):
        lines = _trim(lines[:-1])
    # A quoted block at the end, and the "On … wrote:" line that introduces it.
    end = len(lines)
    while end and (lines[end - 1].lstrip().startswith(">") or not lines[end - 1].strip()):
        end -= 1
    lines = _trim(lines[:end])
    if lines and _ATTRIBUTION.match(lines[-1].strip()):
        lines = _trim(lines[:-1])
    result = "\n".join(lines).strip()
    if not result:
        return original, False
    return result, result != original
