"""Recognising an opt-out: an inbound message whose whole text is one of the configured keywords.

Matching is exact after normalising both sides: Unicode NFKC, case-folded, runs of whitespace
collapsed, and surrounding punctuation dropped, so "Stop", " STOP! " and "stop." opt out while
"stop sending me prices" or "don't stop" do not. Accents are kept (ARRÊTER and ARRETER are two
keywords), since folding them could turn an ordinary word in one language into another's STOP.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

# Punctuation people put around a one-word reply; stripped only at the ends.
_EDGE_PUNCTUATION = " \t\r\n.,;:!¡?¿\"'`«»“”‘’()[]{}*_~-।"


def normalise_keyword(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    collapsed = " ".join(folded.split())
    return collapsed.strip(_EDGE_PUNCTUATION)


class OptOutMatcher:
    """Answers whether a message text is an opt-out keyword."""

    def __init__(self, keywords: Iterable[str]) -> None:
        self.keywords = frozenset(k for k in (normalise_keyword(w) for w in keywords) if k)

    def matches(self, text: str) -> bool:
        # Long texts are never a keyword; skip normalising them.
        if len(text) > 64:
            return False
        return normalise_keyword(text) in self.keywords
