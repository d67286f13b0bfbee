"""The summary contract and the offline responder's extractive text: validation, sentiment,
next action, best passage and bump-up variation."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from shvya_engage.followups import OPENINGS, template_bumpup, variant
from shvya_engage.repository import Turn
from shvya_engage.summaries import (
    SUMMARY_RESPONSE_FORMAT,
    ConversationSummary,
    best_passage,
    extractive_summary,
)


def test_summary_schema_is_strict_and_matches_the_model():
    """The json_schema response format is strict and names exactly the model's fields."""
    spec = SUMMARY_RESPONSE_FORMAT["json_schema"]
    assert SUMMARY_RESPONSE_FORMAT["type"] == "json_schema" and spec["strict"] is True
    schema = spec["schema"]
    assert schema["additionalProperties"] is False
    assert (
        set(schema["required"])
        == set(schema["properties"])
        == set(ConversationSummary.model_fields)
    )
    assert schema["properties"]["sentiment"]["enum"] == ["positive", "neutral", "negative"]


@pytest.mark.parametrize(
    "raw",
    [
        '{"summary": "ok", "key_points": [], "sentiment": "angry", "next_action": "call"}',
        '{"summary": "", "key_points": [], "sentiment": "neutral", "next_action": "call"}',
        '{"summary": "ok", "key_points": "one", "sentiment": "neutral", "next_action": "call"}',
        '{"summary": "ok", "key_points": [], "sentiment": "neutral"}',
        '{"summary": "ok", "key_points": [], "sentiment": "neutral", "next_action": "x", "y": 1}',
        "Sure! Here is the summary: ...",
    ],
)
def test_summary_output_that_breaks_the_contract_is_rejected(raw):
    """Wrong sentiment, empty text, wrong types, missing or extra fields, or prose all fail."""
    with pytest.raises(ValidationError):
        ConversationSummary.model_validate_json(raw)


def test_extractive_summary_reads_the_leads_words():
    """The offline summary quotes the lead, finds a negative mood and suggests a human."""
    turns = [
        Turn("inbound", "The installation was late and the inverter is broken."),
        Turn("outbound", "Sorry to hear that, we will check."),
        Turn("inbound", "This is a terrible experience. I want a refund for the inverter."),
    ]
    summary = extractive_summary("Ravi", turns)
    assert summary.sentiment == "negative"
    assert summary.summary.startswith("Ravi wrote 2 message(s) from the lead, 1 from us.")
    assert any("inverter" in p for p in summary.key_points)
    assert "team" in summary.next_action
    assert ConversationSummary.model_validate(summary.model_dump()) == summary


def test_extractive_summary_positive_price_question_asks_for_pricing():
    """A keen lead whose last message asks about price gets 'send pricing' as next action."""
    turns = [Turn("outbound", "Hi!"), Turn("inbound", "Great, I love it! What is the price?")]
    summary = extractive_summary(None, turns)
    assert summary.sentiment == "positive"
    assert summary.next_action == "Answer the lead's latest message and send pricing details."


def test_best_passage_picks_the_matching_sentences():
    """The offline answer starts at the sentence sharing the most words with the question."""
    content = (
        "Acme Solar was founded in 2009. We install rooftop panels. "
        "The battery warranty lasts ten years. Panels are covered for 25 years."
    )
    passage = best_passage(content, "How long is the battery warranty?", max_chars=80)
    assert passage.startswith("The battery warranty lasts ten years.")
    assert len(passage) <= 80


def test_bumpup_templates_vary_between_bumps_and_are_stable():
    """Successive bump-ups of a lead use different openings; the same bump repeats exactly."""
    lead = uuid.uuid4()
    texts = [template_bumpup(lead, "Ana", n) for n in (1, 2, 3)]
    assert len(set(texts)) == 3
    assert template_bumpup(lead, "Ana", 2) == texts[1]
    assert all("Ana" in t for t in texts)
    starts = {t.split("!")[0].split(" ")[0] for t in texts}
    assert starts == {o.split("{")[0] for o in OPENINGS}
    assert variant(lead, 4, 3) == variant(lead, 1, 3)
