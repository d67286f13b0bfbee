"""Guards on generated text before it leaves engage: never empty, never longer than its channel
allows, and never trusted as markup or control sequences.

A model's output is data. It is sent as plain text: control characters and invisible
direction or zero-width marks are removed, HTML and script are stripped (an email client or a
web inbox must never render or run them), links keep only http(s) targets, and markdown is
rewritten into what the channel displays (WhatsApp's *bold*, plain text elsewhere). Then the
text is cut to the channel's limit at a sentence or word boundary.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass

WHATSAPP_CHANNELS = frozenset({"whatsapp_cloud", "whatsapp_web"})
ELLIPSIS = "…"

# C0 and C1 controls except tab and newline, DEL, and the invisible marks that can reorder or
# hide text (bidi overrides and isolates, zero-width characters, the BOM).
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)
_BLOCK_ELEMENTS = re.compile(
    r"<\s*(script|style|iframe|object|embed|svg|math|template)\b[^>]*>.*?<\s*/\s*\1\s*>",
    re.IGNORECASE | re.DOTALL,
)
_TAG = re.compile(r"</?[A-Za-z!][^<>]*>")
# A link target may hold one level of parentheses, as in "javascript:alert(1)".
_TARGET = r"\(((?:[^()\s]|\([^()\s]*\))*)(?:\s+\"[^\"]*\")?\)"
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]" + _TARGET)
_MD_LINK = re.compile(r"\[([^\]]+)\]" + _TARGET)
_SAFE_URL = re.compile(r"^https?://[^\s<>\"']+$", re.IGNORECASE)
_BARE_UNSAFE_URL = re.compile(r"\b(?:javascript|vbscript|data|file):[^\s]*", re.IGNORECASE)
_MD_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__", re.DOTALL)
_MD_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.MULTILINE)
_MD_FENCE = re.compile(r"^[ \t]*```[^\n]*$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_SENTENCE_END = re.compile(r"[.!?…](?=\s)|\n")


@dataclass(frozen=True)
class ChannelLimits:
    """The longest text each channel may carry, in characters."""

    whatsapp: int = 4096
    email: int = 20_000
    other: int = 4096

    def for_channel(self, channel: str) -> int:
        if channel in WHATSAPP_CHANNELS:
            return self.whatsapp
        if channel == "email":
            return self.email
        return self.other


@dataclass(frozen=True)
class Guarded:
    """Text fit to send, and what the guards had to do to it."""

    text: str
    actions: tuple[str, ...]


def _link(match: re.Match[str]) -> str:
    label, url = match.group(1).strip(), match.group(2).strip()
    if _SAFE_URL.match(url):
        return f"{label} ({url})" if label and label != url else url
    return label


def strip_markup(text: str, channel: str) -> str:
    """Plain text for `channel`: no control characters, no HTML, only http(s) links."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _BLOCK_ELEMENTS.sub("", text)
    text = _TAG.sub("", text)
    # Entities are decoded after tags are gone, so "&lt;script&gt;" becomes visible text
    # "<script>", which plain-text channels show as is; a second pass removes tags it forms.
    text = _TAG.sub("", html.unescape(text))
    text = _CONTROL.sub("", text)
    text = _MD_IMAGE.sub(lambda m: m.group(1).strip(), text)
    text = _MD_LINK.sub(_link, text)
    text = _BARE_UNSAFE_URL.sub("", text)
    text = _MD_HEADING.sub("", text)
    if channel in WHATSAPP_CHANNELS:
        text = _MD_BOLD.sub(lambda m: f"*{m.group(1) or m.group(2)}*", text)
    else:
        text = _MD_BOLD.sub(lambda m: m.group(1) or m.group(2), text)
        text = _MD_FENCE.sub("", text)
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_RUNS.sub("\n\n", text).strip()


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at a sentence end or a word if possible."""
    if len(text) <= limit:
        return text
    room = max(limit - len(ELLIPSIS), 0)
    head = text[:room]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if ends and ends[-1] >= room // 2:
        return head[: ends[-1]].rstrip()
    space = head.rfind(" ")
    if space >= room // 2:
        head = head[:space]
    return head.rstrip() + ELLIPSIS


def guard_text(text: str, channel: str, limits: ChannelLimits, fallback: str) -> Guarded:
    """Sanitise and cut `text` for `channel`; an empty result becomes `fallback`."""
    actions: list[str] = []
    clean = strip_markup(text, channel)
    if clean != text.strip():
        actions.append("sanitised")
    if not clean:
        clean = strip_markup(fallback, channel)
        actions.append("empty_fallback")
    limit = limits.for_channel(channel)
    if len(clean) > limit:
        clean = truncate(clean, limit)
        actions.append("truncated")
    return Guarded(clean, tuple(actions))
