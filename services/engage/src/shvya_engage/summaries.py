"""The shape of a conversation summary, its JSON schema for structured output, and the offline
responder's extractive summary and passage picking.

`ConversationSummary` is what a model must return for ai.summary and what is stored (with its
provenance) in `leads.attributes['summary']`. `SUMMARY_RESPONSE_FORMAT` is the strict JSON-schema
response format sent with the request; the reply is still validated here, because an
OpenAI-compatible server may ignore the format.

The offline side is plain extractive text processing, deterministic and labelled: sentences are
scored by word frequency (summary, key points), a small lexicon gives the sentiment, and simple
rules give the next action.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shvya_engage.repository import Turn

Sentiment = Literal["positive", "neutral", "negative"]


class ConversationSummary(BaseModel):
    """ai.summary's output: {"summary", "key_points", "sentiment", "next_action"}."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    summary: str = Field(min_length=1, max_length=2000)
    key_points: list[str] = Field(max_length=10)
    sentiment: Sentiment
    next_action: str = Field(min_length=1, max_length=500)

    @field_validator("key_points")
    @classmethod
    def _non_empty_points(cls, points: list[str]) -> list[str]:
        cleaned = [p.strip() for p in points]
        if any(not p or len(p) > 500 for p in cleaned):
            raise ValueError("key points must be non-empty and at most 500 characters")
        return cleaned


SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "description": "Two or three sentences."},
        "key_points": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Up to five short facts: needs, objections, budget, dates.",
        },
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "next_action": {"type": "string", "description": "The best next step for sales."},
    },
    "required": ["summary", "key_points", "sentiment", "next_action"],
    "additionalProperties": False,
}

SUMMARY_RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "conversation_summary",
        "description": "A sales conversation summarised for the sales team.",
        "schema": SUMMARY_SCHEMA,
        "strict": True,
    },
}

_SENTENCE = re.compile(r"(?<=[.!?…])\s+|\n+")
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
STOPWORDS = frozenset(
    """a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers him his how i if in into is it its just me more most my
    no nor not now of off on once only or other our ours out over own same she should so some
    such than that the their theirs them then there these they this those through to too under
    until up very was we were what when where which while who whom why will with would you your
    yours hi hello hey thanks thank please ok okay yes""".split()
)
_POSITIVE = frozenset(
    """great good love like perfect excellent interested thanks thank awesome amazing happy
    glad yes sure wonderful helpful nice fantastic appreciate deal ready keen excited""".split()
)
_NEGATIVE = frozenset(
    """bad poor expensive angry disappointed annoyed problem problems issue issues broken
    refund cancel complaint terrible awful hate slow never wrong unhappy frustrated scam
    worst useless late stop unsubscribe""".split()
)
_PRICE = frozenset("price prices pricing cost costs quote budget discount plan plans".split())
_DEMO = frozenset("demo call meeting trial schedule book".split())


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def keywords(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS and len(w) > 2}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


def best_passage(content: str, query: str, max_chars: int = 700) -> str:
    """The run of sentences in `content` that best matches `query`, at most `max_chars`."""
    parts = sentences(content)
    if not parts:
        return content.strip()[:max_chars]
    wanted = keywords(query)
    scores = [len(keywords(s) & wanted) for s in parts]
    start = max(range(len(parts)), key=lambda i: (scores[i], -i)) if any(scores) else 0
    chosen: list[str] = []
    length = 0
    for sentence in parts[start:]:
        if chosen and length + len(sentence) + 1 > max_chars:
            break
        chosen.append(sentence)
        length += len(sentence) + 1
    text = " ".join(chosen)
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def _ranked(texts: Sequence[str]) -> list[tuple[float, int, str]]:
    """Sentences of `texts` scored by the frequency of their content words."""
    all_sentences = [s for t in texts for s in sentences(t)]
    freq = Counter(w for s in all_sentences for w in keywords(s))
    ranked = []
    for index, sentence in enumerate(all_sentences):
        kws = keywords(sentence)
        score = sum(freq[w] for w in kws) / (len(kws) ** 0.5) if kws else 0.0
        ranked.append((score, index, sentence))
    return ranked


def sentiment_of(texts: Sequence[str]) -> Sentiment:
    counted = Counter(words(" ".join(texts)))
    positive = sum(n for w, n in counted.items() if w in _POSITIVE)
    negative = sum(n for w, n in counted.items() if w in _NEGATIVE)
    if positive > negative:
        return "positive"
    if negative > positive:
        return "negative"
    return "neutral"


def next_action_for(turns: Sequence[Turn], sentiment: Sentiment) -> str:
    inbound = [t.body for t in turns if t.direction == "inbound"]
    vocabulary = set(words(" ".join(inbound)))
    if sentiment == "negative":
        return "Have a person from the team contact the lead to address their concerns."
    if turns and turns[-1].direction == "inbound":
        if vocabulary & _PRICE:
            return "Answer the lead's latest message and send pricing details."
        return "Answer the lead's latest message."
    if vocabulary & _DEMO:
        return "Propose a time for a demo or call."
    if vocabulary & _PRICE:
        return "Follow up on the pricing discussion and offer a quote."
    return "Follow up with the lead if they stay silent."


def extractive_summary(name: str | None, turns: Sequence[Turn]) -> ConversationSummary:
    """A deterministic summary from the lead's own words; no model involved."""
    inbound = [t.body for t in turns if t.direction == "inbound"]
    outbound = [t.body for t in turns if t.direction == "outbound"]
    who = name or "The lead"
    sentiment = sentiment_of(inbound)
    ranked = sorted(_ranked(inbound), key=lambda r: (-r[0], r[1]))
    seen: set[str] = set()
    points: list[tuple[int, str]] = []
    for _score, index, sentence in ranked:
        key = sentence.lower()
        if key in seen:
            continue
        seen.add(key)
        points.append((index, sentence if len(sentence) <= 300 else sentence[:299] + "…"))
        if len(points) == 5:
            break
    points.sort()
    top = [s for _, s in points]
    counts = f"{len(inbound)} message(s) from the lead, {len(outbound)} from us"
    if top:
        said = " ".join(top[:2])
        summary = f"{who} wrote {counts}. Main points in their words: {said}"
    else:
        summary = f"{who} has {counts} and has not written anything yet."
    return ConversationSummary(
        summary=summary[:2000],
        key_points=top,
        sentiment=sentiment,
        next_action=next_action_for(turns, sentiment),
    )
