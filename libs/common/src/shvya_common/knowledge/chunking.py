"""Cutting a document into overlapping chunks small enough to embed and precise enough to cite.

Markdown is first split into sections at its ATX headings (`#` to `######`, never inside fenced
code), and each chunk remembers the heading path above it ("Pricing > Annual plans"), which is
searched and embedded with it. Each section's paragraphs are packed into chunks of at most
`max_chars`; a paragraph longer than that is split at sentence ends, and a sentence longer than
that at spaces. Consecutive chunks of one section share up to `overlap_chars` of text, so an
answer that straddles a cut is still whole in one of them. Plain text has no headings: its
paragraphs are packed the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Format = Literal["text", "markdown", "html"]

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+")
_PARAGRAPH = "\n\n"
_SENTENCE = " "


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: its position, the heading path above it, and its text."""

    index: int
    heading: str | None
    text: str


@dataclass(frozen=True)
class _Unit:
    text: str
    # What joins this unit to the one before it in the same chunk.
    joiner: str


def chunk_document(
    text: str, fmt: Format = "markdown", *, max_chars: int = 1000, overlap_chars: int = 150
) -> list[Chunk]:
    """Chunks of `text` in document order; HTML is expected already converted to text."""
    if max_chars < 50:
        raise ValueError("max_chars must be at least 50")
    if overlap_chars < 0 or overlap_chars * 2 > max_chars:
        raise ValueError("overlap_chars must be between 0 and half of max_chars")
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    sections: list[tuple[str | None, list[str]]]
    if fmt == "text":
        sections = [(None, normalised.split("\n"))]
    else:
        sections = _sections(normalised)
    chunks: list[Chunk] = []
    for heading, lines in sections:
        units = [
            unit for paragraph in _paragraphs(lines) for unit in _split_long(paragraph, max_chars)
        ]
        for body in _pack(units, max_chars, overlap_chars):
            chunks.append(Chunk(index=len(chunks), heading=heading, text=body))
    return chunks


def _sections(text: str) -> list[tuple[str | None, list[str]]]:
    """(heading path, body lines) for each section, the text before the first heading included."""
    sections: list[tuple[str | None, list[str]]] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    in_fence = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match is None:
            lines.append(line)
            continue
        sections.append((_path_text(path), lines))
        level, title = len(match.group(1)), match.group(2).strip()
        path = [(lvl, name) for lvl, name in path if lvl < level]
        if title:
            path.append((level, title))
        lines = []
    sections.append((_path_text(path), lines))
    return sections


def _path_text(path: list[tuple[int, str]]) -> str | None:
    return " > ".join(name for _, name in path) or None


def _paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated blocks; a fenced code block stays one block, blank lines and all."""
    blocks: list[str] = []
    current: list[str] = []
    in_fence = False
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        if not in_fence and not line.strip():
            if current:
                blocks.append("\n".join(current).strip("\n"))
                current = []
            continue
        current.append(line.rstrip())
    if current:
        blocks.append("\n".join(current).strip("\n"))
    return [block for block in blocks if block.strip()]


def _split_long(paragraph: str, max_chars: int) -> list[_Unit]:
    """The paragraph as one unit, or, when too long, its sentences (and pieces of sentences)."""
    if len(paragraph) <= max_chars:
        return [_Unit(paragraph, _PARAGRAPH)]
    units: list[_Unit] = []
    for sentence in _SENTENCE_END.split(paragraph):
        sentence = sentence.strip()
        if not sentence:
            continue
        for piece in _split_words(sentence, max_chars):
            units.append(_Unit(piece, _SENTENCE if units else _PARAGRAPH))
    return units


def _split_words(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    current = ""
    for word in sentence.split():
        while len(word) > max_chars:  # a "word" longer than a chunk: a URL, a hash, a table row
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:max_chars])
            word = word[max_chars:]
        if current and len(current) + 1 + len(word) > max_chars:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        pieces.append(current)
    return pieces


def _pack(units: list[_Unit], max_chars: int, overlap_chars: int) -> list[str]:
    """Greedy packing of units into bodies of at most max_chars, with overlap between them."""
    bodies: list[str] = []
    current: list[_Unit] = []
    for unit in units:
        if current and _length(current) + len(unit.joiner) + len(unit.text) > max_chars:
            bodies.append(_join(current))
            current = _tail(current, overlap_chars)
            if current and _length(current) + len(unit.joiner) + len(unit.text) > max_chars:
                current = []
        current.append(unit)
    if current:
        bodies.append(_join(current))
    return bodies


def _length(units: list[_Unit]) -> int:
    return sum(len(u.text) for u in units) + sum(len(u.joiner) for u in units[1:])


def _join(units: list[_Unit]) -> str:
    return units[0].text + "".join(u.joiner + u.text for u in units[1:])


def _tail(units: list[_Unit], overlap_chars: int) -> list[_Unit]:
    """The last units, at most overlap_chars long; a part of the last one if it alone is longer."""
    if overlap_chars == 0:
        return []
    tail: list[_Unit] = []
    for unit in reversed(units):
        if _length([unit, *tail]) > overlap_chars:
            break
        tail.insert(0, unit)
    if tail:
        return [_Unit(tail[0].text, _PARAGRAPH), *tail[1:]]
    last = units[-1].text
    cut = last.find(" ", len(last) - overlap_chars)
    if cut == -1 or cut + 1 >= len(last):
        return []
    return [_Unit(last[cut + 1 :], _PARAGRAPH)]
