"""Bump-up texts: a personal nudge to a lead who went silent after our last message.

Without a model, one of a few openings is picked so that a lead's successive bump-ups differ
and different leads do not all get the same line; the choice is a stable function of the lead
and the bump-up number, so a retried job writes the same text.
"""

from __future__ import annotations

import hashlib
import uuid

OPENINGS: tuple[str, ...] = (
    "Hey{name}! Just following up on my last message.",
    "Hi{name}! Wanted to check in and see how things are going.",
    "Hello{name}! Circling back on our conversation.",
)
CLOSINGS: tuple[str, ...] = (
    "Is there anything I can help you with?",
    "Do you have any questions I can answer?",
    "Let me know if you'd like to continue — happy to help.",
)


def variant(lead_id: uuid.UUID, number: int, count: int) -> int:
    """Which of `count` variants bump-up `number` of a lead uses; consecutive ones differ."""
    offset = int.from_bytes(hashlib.blake2b(lead_id.bytes, digest_size=2).digest(), "big")
    return (offset + number - 1) % count


def template_bumpup(lead_id: uuid.UUID, first_name: str, number: int) -> str:
    name = f" {first_name}" if first_name else ""
    pick = variant(lead_id, number, len(OPENINGS))
    return f"{OPENINGS[pick].format(name=name)} {CLOSINGS[pick]}"
