"""Engage's output guards: never empty, cut to the channel's limit, never trusted as markup."""

from __future__ import annotations

import pytest

from shvya_engage.guards import ChannelLimits, guard_text, strip_markup, truncate

LIMITS = ChannelLimits(whatsapp=4096, email=20_000, other=4096)
FALLBACK = "Thanks! We'll get back to you."


def test_script_and_html_are_removed_not_escaped_into_the_reply():
    """HTML tags and whole script elements from a model never reach the lead."""
    text = 'Sure! <script>alert("x")</script><b>Our plan</b> costs <i>$10</i>.<img src=x onerror=1>'
    out = guard_text(text, "email", LIMITS, FALLBACK)
    assert out.text == "Sure! Our plan costs $10."
    assert "sanitised" in out.actions


def test_encoded_markup_cannot_smuggle_tags_through():
    """Entity-encoded tags are decoded and then stripped, so they cannot form markup later."""
    out = strip_markup("Hi &lt;script&gt;steal()&lt;/script&gt; there", "email")
    assert "<script" not in out and "&lt;" not in out
    assert out.startswith("Hi") and out.endswith("there")


def test_control_and_invisible_characters_are_stripped():
    """C0/C1 controls, bidi overrides and zero-width marks are removed; newlines stay."""
    text = "Hello\x00\x07 wor\u200bld\u202e!\nBye\x1b[31m"
    assert strip_markup(text, "whatsapp_cloud") == "Hello world!\nBye[31m"


def test_links_keep_only_http_targets():
    """Markdown links become 'label (url)' for http(s) and plain labels for anything else."""
    text = "See [our site](https://example.com/p) or [click](javascript:alert(1)) javascript:x()"
    out = strip_markup(text, "whatsapp_web")
    assert out == "See our site (https://example.com/p) or click"


def test_markdown_is_rewritten_for_whatsapp_and_plain_elsewhere():
    """**bold** becomes WhatsApp's *bold*, headings lose their hashes; email gets plain text."""
    text = "## Pricing\n**Pro** plan"
    assert strip_markup(text, "whatsapp_cloud") == "Pricing\n*Pro* plan"
    assert strip_markup(text, "email") == "Pricing\nPro plan"


@pytest.mark.parametrize("raw", ["", "   ", "<script>only()</script>", "\x00\x01"])
def test_reply_is_never_empty(raw):
    """A reply that is empty after the guards is replaced by the fallback text."""
    out = guard_text(raw, "whatsapp_cloud", LIMITS, FALLBACK)
    assert out.text == FALLBACK
    assert "empty_fallback" in out.actions


def test_whatsapp_reply_is_cut_to_4096_at_a_sentence():
    """A long reply is cut under WhatsApp's 4096 characters, at a sentence end."""
    text = " ".join(f"Sentence number {i} is here." for i in range(400))
    out = guard_text(text, "whatsapp_cloud", LIMITS, FALLBACK)
    assert len(out.text) <= 4096
    assert out.text.endswith(".")
    assert "truncated" in out.actions
    email = guard_text(text, "email", LIMITS, FALLBACK)
    assert email.text == text and "truncated" not in email.actions


def test_truncate_without_sentences_cuts_at_a_word_and_marks_it():
    """With no sentence end in reach, the cut falls on a word boundary with an ellipsis."""
    out = truncate("word " * 50, 33)
    assert len(out) <= 33 and out.endswith("…") and not out.endswith(" …")
    assert out.replace("…", "").split() == ["word"] * (len(out.replace("…", "").split()))
