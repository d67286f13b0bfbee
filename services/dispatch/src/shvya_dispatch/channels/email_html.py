"""The HTML part of an email whose HTML was written for it (a campaign's rendered template),
as opposed to one made from plain text (`email.render_html`).

The HTML is the company's own markup, already rendered in Jinja2's sandbox with autoescaping,
so lead fields in it are escaped; here it only gets what the platform adds to every email:

- each `<a href="http(s)://...">` points at the click-tracking redirect (when a `track`
  function is given); other schemes (`mailto:`, `tel:`, anchors) are left alone;
- the unsubscribe footer and the open pixel go just before `</body>`, or at the end of a
  fragment, which is then wrapped in a minimal document.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from urllib.parse import urlsplit

_ANCHOR = re.compile(r"<a\b[^>]*>", re.IGNORECASE)
_HREF = re.compile(r"""(\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_DOCUMENT = re.compile(r"<html\b|<body\b|<!doctype", re.IGNORECASE)


def _tracked_anchor(tag: str, track: Callable[[str], str]) -> str:
    def one(match: re.Match[str]) -> str:
        raw = next(g for g in match.groups()[1:] if g is not None)
        url = html.unescape(raw).strip()
        if not url.lower().startswith(("http://", "https://")) or not urlsplit(url).hostname:
            return match.group(0)
        return f'{match.group(1)}"{html.escape(track(url), quote=True)}"'

    return _HREF.sub(one, tag, count=1)


def prepare_html(
    document: str,
    *,
    track: Callable[[str], str] | None = None,
    pixel_url: str | None = None,
    unsubscribe_url: str | None = None,
) -> str:
    """The authored HTML with tracked links, the unsubscribe footer and the open pixel."""
    out = document
    if track is not None:
        out = _ANCHOR.sub(lambda m: _tracked_anchor(m.group(0), track), out)
    extra = ""
    if unsubscribe_url is not None:
        href = html.escape(unsubscribe_url, quote=True)
        extra += (
            '\n<p style="font-size:12px;color:#777">Don\'t want these emails?'
            f' <a href="{href}">Unsubscribe</a></p>'
        )
    if pixel_url is not None:
        src = html.escape(pixel_url, quote=True)
        extra += (
            f'\n<img src="{src}" width="1" height="1" alt="" style="border:0;width:1px;height:1px">'
        )
    if not _DOCUMENT.search(out):
        return (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n<body>\n'
            f"{out}{extra}\n</body></html>\n"
        )
    ends = list(_BODY_END.finditer(out))
    if not ends:
        return f"{out}{extra}\n"
    at = ends[-1].start()
    return f"{out[:at]}{extra}\n{out[at:]}"
