"""Knowledge-base pieces that need no server: chunking, HTML to text, rank fusion, settings."""

from __future__ import annotations

import itertools
import uuid

import pytest
from pydantic import ValidationError

from shvya_common.knowledge import chunk_document, fuse, html_to_text
from shvya_common.knowledge.documents import NewDocument, default_title, embedding_text, prepare
from shvya_common.knowledge.settings import KnowledgeSettings, offline_embedder_installed

MARKDOWN = """Welcome to Velora.

# Pricing

Plans are simple.

## City plan

The City plan costs 39 euros a month.

```
# not a heading
```

## Cargo plan

The Cargo plan costs 89 euros a month.

# Support

Call us.
"""


def test_markdown_chunks_follow_headings_with_their_path():
    """Each chunk carries the heading path above it, and code fences hide '#' lines."""
    chunks = chunk_document(MARKDOWN, "markdown", max_chars=500, overlap_chars=50)
    assert [(c.heading, c.text.splitlines()[0]) for c in chunks] == [
        (None, "Welcome to Velora."),
        ("Pricing", "Plans are simple."),
        ("Pricing > City plan", "The City plan costs 39 euros a month."),
        ("Pricing > Cargo plan", "The Cargo plan costs 89 euros a month."),
        ("Support", "Call us."),
    ]
    assert "# not a heading" in chunks[2].text
    assert [c.index for c in chunks] == list(range(5))


def test_plain_text_is_not_split_at_hash_lines():
    """In plain text a line starting with '#' is text, not a heading."""
    chunks = chunk_document("# 1 in sales\n\nSecond paragraph.", "text", max_chars=500)
    assert len(chunks) == 1
    assert chunks[0].heading is None
    assert chunks[0].text == "# 1 in sales\n\nSecond paragraph."


def test_long_sections_are_cut_under_the_limit_with_overlap():
    """A long section becomes several chunks no longer than the limit, each sharing text with
    the one before."""
    sentences = [f"Sentence number {i} talks about bikes." for i in range(80)]
    chunks = chunk_document(" ".join(sentences), "text", max_chars=300, overlap_chars=80)
    assert len(chunks) > 5
    assert all(len(c.text) <= 300 for c in chunks)
    for before, after in itertools.pairwise(chunks):
        first_sentence = after.text.split(". ")[0]
        assert first_sentence in before.text
    joined = " ".join(c.text for c in chunks)
    assert all(s in joined for s in sentences)


def test_a_word_longer_than_a_chunk_is_split_hard():
    """A token with no spaces longer than the limit is cut into pieces rather than dropped."""
    token = "x" * 250
    chunks = chunk_document(f"start {token} end", "text", max_chars=100, overlap_chars=0)
    assert all(len(c.text) <= 100 for c in chunks)
    assert "".join(c.text for c in chunks).replace(" ", "") == f"start{token}end"


def test_chunk_settings_out_of_range_are_refused():
    """An overlap of more than half a chunk is refused, so chunking always makes progress."""
    with pytest.raises(ValueError, match="overlap"):
        chunk_document("text", max_chars=100, overlap_chars=60)


HTML = """<html><head><title>Velora | Pricing</title><style>p { color: red }</style></head>
<body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<h1>Plans &amp; prices</h1><p>Our plans<br>include servicing.</p>
<h2>City</h2><ul><li>39 euros a month</li><li>50 km range</li></ul>
<table><tr><th>Plan</th><th>Price</th></tr><tr><td>Cargo</td><td>89</td></tr></table>
<pre>  keep   this
    indent</pre>
<script>document.write("tracking")</script><footer>Call +31 20 555 0100</footer></body></html>"""


def test_html_becomes_markdown_like_text_without_scripts_or_navigation():
    """HTML headings, lists, tables and pre blocks survive as text; scripts and navigation go."""
    title, text = html_to_text(HTML)
    assert title == "Velora | Pricing"
    assert "# Plans & prices" in text
    assert "## City" in text
    assert "- 39 euros a month" in text
    assert "Plan | Price" in text and "Cargo | 89" in text
    assert "```\n  keep   this\n    indent\n```" in text
    assert "Our plans\ninclude servicing." in text
    assert "Call +31 20 555 0100" in text
    for dropped in ("tracking", "About", "color: red"):
        assert dropped not in text


def test_html_documents_are_chunked_at_their_headings():
    """An HTML document is converted before chunking, so its h2 sections become chunk headings."""
    title, fmt, text = prepare(NewDocument(content=HTML, format="html"))
    assert (title, fmt) == ("Velora | Pricing", "html")
    headings = [c.heading for c in chunk_document(text, "markdown", max_chars=500)]
    assert "Plans & prices > City" in headings


def test_missing_titles_come_from_the_first_heading_or_line():
    """A document without a title is named by its first heading, or else its first line."""
    assert default_title("intro\n# Returns policy\ntext", "markdown") == "Returns policy"
    assert default_title("\n\nRefunds within 14 days.\nMore.", "text") == "Refunds within 14 days."
    with pytest.raises(ValueError, match="no text"):
        prepare(NewDocument(content="<html><script>x()</script></html>", format="html"))


def test_embedding_text_puts_title_and_heading_above_the_chunk():
    """What is embedded names the document and section, so a bare paragraph keeps its context."""
    assert embedding_text("Pricing", "Pricing > City", "39 euros") == (
        "Pricing\nPricing > City\n39 euros"
    )
    assert embedding_text("Pricing", None, "39 euros") == "Pricing\n39 euros"


def test_rank_fusion_rewards_agreement_and_breaks_ties_by_rank_then_list():
    """RRF puts an item both lists found above items only one found; ties go to the better rank,
    then to the first list."""
    a, b, c, d = (uuid.UUID(int=i) for i in range(1, 5))
    fused = fuse([[(a, 0.9), (b, 0.8)], [(b, 3.0), (c, 1.0)]], rrf_k=60)
    assert [item for item, _ in fused] == [b, a, c]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
    ties = fuse([[(d, 0.5)], [(c, 2.0)]], rrf_k=60)
    assert [item for item, _ in ties] == [d, c]


def test_embedding_settings_are_checked_at_start_up():
    """Contradictory embedding settings stop start-up with a message that names the fix."""
    with pytest.raises(ValidationError, match="OPENAI_API_KEY"):
        KnowledgeSettings(embeddings_provider="openai")
    with pytest.raises(ValidationError, match="EMBEDDINGS_DIMENSIONS=384"):
        KnowledgeSettings(embeddings_provider="local", embeddings_dimensions=512)
    with pytest.raises(ValidationError, match="half"):
        KnowledgeSettings(kb_chunk_chars=400, kb_chunk_overlap_chars=300)
    with pytest.raises(ValidationError, match="kb_text_search_config"):
        KnowledgeSettings(kb_text_search_config="english; DROP TABLE x")


def test_auto_provider_prefers_a_key_then_the_offline_model():
    """`auto` means OpenAI when a key is set, the offline model when installed, else none."""
    keyed = KnowledgeSettings(embeddings_provider="auto", openai_api_key="sk-test")
    assert keyed.resolved_embeddings_provider() == "openai"
    own_key = KnowledgeSettings(embeddings_api_key="sk-embed", embeddings_base_url="http://x/v1")
    assert own_key.embeddings_key() is not None
    assert own_key.embeddings_key().get_secret_value() == "sk-embed"  # type: ignore[union-attr]
    assert own_key.embeddings_url() == "http://x/v1"
    keyless = KnowledgeSettings(
        embeddings_provider="auto", openai_api_key="", embeddings_api_key=""
    )
    offline = "local" if offline_embedder_installed() else "none"  # `make test` installs it
    assert keyless.resolved_embeddings_provider() == offline
    wide = KnowledgeSettings(
        embeddings_provider="auto",
        openai_api_key="",
        embeddings_api_key="",
        embeddings_dimensions=1536,
    )
    assert wide.resolved_embeddings_provider() == "none"
    assert KnowledgeSettings(embeddings_provider="none").resolved_embeddings_provider() == "none"
