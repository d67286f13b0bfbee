"""HTML to plain text for the knowledge base, with the standard library's `html.parser`.

Headings become markdown headings (so the chunker cuts at them), list items become "- " lines,
table rows become lines of cells separated by " | ", block elements become paragraphs, and
preformatted text is kept as a fenced block. Scripts, styles, navigation, forms and other
non-content elements are dropped. The page's `<title>` (or else its first `<h1>`) is the title.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_SKIP = frozenset(
    {
        "script",
        "style",
        "noscript",
        "template",
        "svg",
        "iframe",
        "canvas",
        "nav",
        "form",
        "button",
        "select",
        "textarea",
        "object",
        "head",
    }
)
_BLOCK = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "main",
        "header",
        "footer",
        "aside",
        "ul",
        "ol",
        "table",
        "blockquote",
        "pre",
        "dl",
        "dt",
        "dd",
        "figure",
        "figcaption",
        "address",
        "details",
        "summary",
        "hr",
        "body",
        "html",
    }
)
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "wbr", "source", "area", "col"})
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.title_parts: list[str] = []
        self.first_h1: str | None = None
        self._skip = 0
        self._in_title = False
        self._pre = 0
        self._heading: tuple[int, list[str]] | None = None
        self._row_cells = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
            return
        if tag in _SKIP:
            if tag not in _VOID:
                self._skip += 1
            return
        if self._skip:
            return
        if tag in _HEADINGS:
            self._heading = (_HEADINGS[tag], [])
        elif tag == "li":
            self.out.append("\n- ")
        elif tag == "br":
            self.out.append("\n")
        elif tag == "tr":
            self.out.append("\n")
            self._row_cells = 0
        elif tag in ("td", "th"):
            if self._row_cells:
                self.out.append(" | ")
            self._row_cells += 1
        elif tag == "pre":
            self._pre += 1
            if self._pre == 1:
                self.out.append("\n\n```\n")
        elif tag in _BLOCK:
            self.out.append("\n\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
            return
        if tag in _SKIP:
            if self._skip and tag not in _VOID:
                self._skip -= 1
            return
        if self._skip:
            return
        if tag in _HEADINGS and self._heading is not None:
            level, parts = self._heading
            self._heading = None
            text = " ".join("".join(parts).split())
            if text:
                self.out.append(f"\n\n{'#' * level} {text}\n\n")
                if level == 1 and self.first_h1 is None:
                    self.first_h1 = text
        elif tag == "pre" and self._pre:
            self._pre -= 1
            if not self._pre:
                self.out.append("\n```\n\n")
        elif tag in _BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
            return
        if self._skip:
            return
        if self._heading is not None:
            self._heading[1].append(data)
            return
        if self._pre:
            self.out.append(data)
        else:
            self.out.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> tuple[str | None, str]:
    """(title, text) of an HTML page; the text uses markdown headings and list markers."""
    parser = _Extractor()
    parser.feed(html)
    parser.close()
    lines: list[str] = []
    in_fence = False
    for line in "".join(parser.out).split("\n"):
        if line == "```":
            in_fence = not in_fence
        # Preformatted text keeps its spacing; everything else is normalised.
        lines.append(line.rstrip() if in_fence else _SPACES.sub(" ", line).strip())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    title = " ".join("".join(parser.title_parts).split()) or parser.first_h1
    return title, text
