"""The knowledge-base statistics that searches read (0019: `ai_kb_counts`, `ai_kb_terms`) stay
equal to what counting the chunks gives, through every kind of write, and keyword search ranks
exactly as ranking every matching chunk would, also when it answers from its first pass."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shvya_common.db import create_pool
from shvya_common.knowledge import KnowledgeBase, NewDocument, reembed, retrieval
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.test_kb_retrieval import load_fixture, new_company, openai_embedder

pytestmark = pytest.mark.integration

COUNTED = """
SELECT company_id, ts_config::text AS cfg,
       CASE WHEN embedding IS NULL THEN '' ELSE embedding_model END AS model, count(*) AS n
FROM ai_kb_docs GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
KEPT = """
SELECT company_id, ts_config::text AS cfg, embedding_model AS model, chunks AS n
FROM ai_kb_counts WHERE chunks <> 0 ORDER BY 1, 2, 3
"""
COUNTED_TERMS = """
SELECT company_id, ts_config::text AS cfg, lexeme, count(*) AS df
FROM ai_kb_docs, unnest(tsvector_to_array(tsv)) AS lexeme GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
KEPT_TERMS = """
SELECT company_id, ts_config::text AS cfg, lexeme, df FROM ai_kb_terms WHERE df <> 0
ORDER BY 1, 2, 3
"""


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_url, 1, 4)
    yield p
    await p.close()


async def assert_statistics_match(pool: asyncpg.Pool) -> None:
    assert [tuple(r) for r in await pool.fetch(KEPT)] == [
        tuple(r) for r in await pool.fetch(COUNTED)
    ]
    assert [tuple(r) for r in await pool.fetch(KEPT_TERMS)] == [
        tuple(r) for r in await pool.fetch(COUNTED_TERMS)
    ]
    # Nothing left behind at zero (or below) by deletes.
    assert await pool.fetchval("SELECT count(*) FROM ai_kb_counts WHERE chunks <= 0") == 0
    assert await pool.fetchval("SELECT count(*) FROM ai_kb_terms WHERE df <= 0") == 0


async def test_statistics_follow_uploads_replacements_reembeds_deletes_and_companies(pool):
    """Uploads, a replacement, a re-embed with another model, a change of text-search
    configuration, a document deleted and a company deleted: after each, the kept counts and
    document frequencies are exactly those of the chunks."""
    first, second = await new_company(pool, "First"), await new_company(pool, "Second")
    kb = KnowledgeBase(pool, None, chunk_chars=300, overlap_chars=30)
    await load_fixture(kb, first)
    stored = await kb.add_document(
        second, NewDocument(content="Battery warranty: two years on every battery pack.")
    )
    await assert_statistics_match(pool)
    assert await pool.fetchval("SELECT count(*) FROM ai_kb_counts") == 2

    await kb.replace_document(
        second, stored.info.id, NewDocument(content="Warranty: three years, frames for life.")
    )
    await assert_statistics_match(pool)

    async with FakeOpenAI(api_key="sk-test", default_dimensions=384) as server:
        embedder = openai_embedder(server)
        try:
            await reembed(pool, embedder, company_id=first, batch_size=16)
        finally:
            await embedder.aclose()
    await assert_statistics_match(pool)
    models = {r["model"] for r in await pool.fetch(KEPT) if r["company_id"] == first}
    assert models == {"openai:text-embedding-3-small@384"}

    await pool.execute(
        "UPDATE ai_kb_docs SET ts_config = 'simple'::regconfig WHERE company_id = $1", second
    )
    await assert_statistics_match(pool)

    assert await kb.delete_document(second, stored.info.id)
    await assert_statistics_match(pool)
    assert [r["company_id"] for r in await pool.fetch(KEPT)] == [first]

    await pool.execute("DELETE FROM companies WHERE id = $1", first)
    await assert_statistics_match(pool)
    assert await pool.fetchval("SELECT count(*) FROM ai_kb_counts") == 0
    assert await pool.fetchval("SELECT count(*) FROM ai_kb_terms") == 0


async def _rank(
    pool: asyncpg.Pool, company: uuid.UUID, query: str, limit: int, op: str
) -> list[tuple[uuid.UUID, float]]:
    """The chunks with any (`|`) or all (`&`) of the question's words, ranked."""
    async with pool.acquire() as conn:
        terms = await retrieval._terms(conn, company, ["english"], query)
        return await retrieval._ranked(conn, company, terms, op, limit, 0.0)


@pytest.mark.parametrize(
    ("query", "first_pass_enough"),
    [
        ("battery warranty", True),  # both words in many chunks: the first pass answers
        ("warranty roof charger cable", False),  # few chunks have all four: everything ranked
        ("cable", True),  # one word: "all" and "any" are the same single pass
    ],
)
async def test_keyword_ranking_is_the_same_as_ranking_every_matching_chunk(
    pool, query, first_pass_enough
):
    company = await new_company(pool)
    words = "battery warranty charger cable inverter roof".split()
    rows = []
    for i in range(600):
        picked = [words[i % 6], words[(i // 6) % 6], words[(i // 36) % 6]]
        title = "Item " + str(i) if i % 7 else words[i % 6].title() + " guide"
        rows.append((company, title, " ".join(picked) + f" details for item {i}", i % 50))
    doc = await pool.fetchval(
        "INSERT INTO ai_kb_documents (company_id, title, format, content, content_sha256)"
        " VALUES ($1, 'Catalogue', 'text', 'c', 'c') RETURNING id",
        company,
    )
    await pool.executemany(
        "INSERT INTO ai_kb_docs (company_id, doc_id, title, content, chunk_index)"
        " VALUES ($1, $5, $2, $3, $4)",
        [(*row, doc) for row in rows],
    )
    async with pool.acquire() as conn:
        found = await retrieval._keyword(conn, company, query, ["english"], 20, 0.0)
    expected = await _rank(pool, company, query, 20, "|")
    assert found == expected and len(found) == 20
    all_words = await _rank(pool, company, query, 20, "&")
    # The first case is answered from the chunks with every word, and they are the top 20.
    assert (all_words == expected) is first_pass_enough
