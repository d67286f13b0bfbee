"""Hybrid retrieval: vector similarity and keyword rank, fused with reciprocal rank fusion.

`retrieve()` runs two searches over one company's chunks and merges their rankings:

- vector: cosine distance to the query's embedding through the HNSW index, over the chunks whose
  vector was made by the same model (vectors of different models are never compared);
- keyword: PostgreSQL full text over a GIN index. Requiring every word of a question
  (`websearch_to_tsquery`) misses most natural questions, so a chunk matches on any of the
  question's lexemes, each weighed by its rarity (BM25's idf) and by `ts_rank_cd`, which favours
  matches in titles and headings.

Each chunk's score is the sum of 1 / (rrf_k + rank) over the searches that found it. `mode` says
which searches ran and `note` says why one did not (no embedder, chunks not yet embedded with
this model, the embeddings API failing, a question with no searchable words), so a caller never
mistakes a keyword-only answer for a hybrid one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

import asyncpg
import structlog

from shvya_common.errors import ShvyaError
from shvya_common.knowledge.embedders import Embedder
from shvya_common.knowledge.repository import as_vector

log = structlog.get_logger(__name__)

Mode = Literal["hybrid", "keyword", "vector"]

DEFAULT_CANDIDATES = 20
DEFAULT_RRF_K = 60
# In hybrid mode a keyword hit must cover this share of the question's word weight: a chunk that
# shares one middling word with the question would otherwise outvote the semantic ranking in RRF.
# Alone, keyword search keeps every match (there is nothing better to rank by).
HYBRID_MIN_COVERAGE = 0.25

_STATS = """
WITH mine AS (
    SELECT embedding IS NOT NULL AND embedding_model = $2 AS ready, ts_config
    FROM ai_kb_docs WHERE company_id = $1
), configs AS (SELECT DISTINCT ts_config FROM mine)
SELECT
    (SELECT count(*) FROM mine)::int AS total,
    (SELECT count(*) FROM mine WHERE ready)::int AS ready,
    (SELECT coalesce(array_agg(ts_config::text), '{}') FROM configs) AS configs,
    (SELECT coalesce(bool_or(length(to_tsvector(ts_config, $3)) > 0), false) FROM configs)
        AS searchable,
    (SELECT atttypmod FROM pg_attribute
     WHERE attrelid = 'ai_kb_docs'::regclass AND attname = 'embedding') AS dimensions
"""

# Every lexeme of the question is weighed by its rarity among the company's chunks (BM25's
# idf, ln((N - df + 0.5) / (df + 0.5))): words in half the chunks or more weigh nothing, unless
# no word is rarer (a tiny knowledge base), when each counts 1. A chunk scores the sum, over the
# words it contains, of idf * (1 + ts_rank_cd), which favours title and heading matches. It is
# kept only if its words carry at least $5 of the question's weight (words absent from the
# knowledge base included). Lexemes are quoted for tsquery input: quotes and backslashes doubled.
_KEYWORD = r"""
WITH chunks AS (SELECT count(*)::float8 AS n FROM ai_kb_docs WHERE company_id = $1),
terms AS (
    SELECT DISTINCT cfg::regconfig AS cfg,
           ('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''')::tsquery AS tq
    FROM unnest($3::text[]) AS cfg,
         unnest(tsvector_to_array(to_tsvector(cfg::regconfig, $2))) AS lexeme
),
counted AS (
    SELECT t.cfg, t.tq, df.df, ln((chunks.n - df.df + 0.5) / (df.df + 0.5)) AS idf
    FROM terms t CROSS JOIN chunks
    CROSS JOIN LATERAL (SELECT count(*)::float8 AS df FROM ai_kb_docs c
                        WHERE c.company_id = $1 AND c.ts_config = t.cfg AND c.tsv @@ t.tq) df
),
informative AS (SELECT bool_or(idf > 0 AND df > 0) AS any FROM counted),
weighted AS (
    SELECT cfg, tq, df, CASE WHEN informative.any THEN idf ELSE 1.0 END AS idf
    FROM counted CROSS JOIN informative
    WHERE idf > 0 OR NOT informative.any
),
mass AS (SELECT cfg, sum(idf) AS total FROM weighted GROUP BY cfg)
SELECT c.id, sum(w.idf * (1 + ts_rank_cd(c.tsv, w.tq, 1))) AS rank
FROM ai_kb_docs c
JOIN weighted w ON w.cfg = c.ts_config AND w.df > 0 AND c.tsv @@ w.tq
JOIN mass m ON m.cfg = c.ts_config
WHERE c.company_id = $1
GROUP BY c.id, c.title, c.chunk_index, m.total
HAVING sum(w.idf) >= $5 * m.total
ORDER BY rank DESC, c.title, c.chunk_index, c.id
LIMIT $4
"""

# Materialised so the iterative HNSW scan may return rows slightly out of order, then sorted.
_VECTOR = """
WITH nearest AS MATERIALIZED (
    SELECT id, embedding <=> $2::vector AS distance
    FROM ai_kb_docs
    WHERE company_id = $1 AND embedding_model = $3 AND embedding IS NOT NULL
    ORDER BY embedding <=> $2::vector
    LIMIT $4
)
SELECT id, 1 - distance AS similarity FROM nearest ORDER BY distance, id
"""

_DETAILS = """
SELECT c.id, c.doc_id, c.title, coalesce(c.source, d.source) AS source, c.content, c.heading,
       c.chunk_index
FROM ai_kb_docs c JOIN ai_kb_documents d ON d.id = c.doc_id
WHERE c.id = ANY($1::uuid[])
"""


@dataclass(frozen=True)
class RetrievedChunk:
    """One chunk found for a query: where it comes from, its text, and its fused score."""

    doc_id: uuid.UUID
    title: str
    source: str | None
    content: str
    score: float
    chunk_id: uuid.UUID
    heading: str | None = None
    chunk_index: int = 0
    # Cosine similarity to the query (vector search), when that search found it.
    vector_similarity: float | None = None
    # Keyword score (idf-weighted ts_rank_cd), when the keyword search found it.
    keyword_rank: float | None = None


@dataclass(frozen=True)
class Retrieval:
    """The top chunks, best first; which searches ran; and why one did not, if so."""

    chunks: list[RetrievedChunk]
    mode: Mode
    note: str | None = None
    embedder: str | None = None


@dataclass(frozen=True)
class _Stats:
    total: int
    ready: int
    configs: list[str]
    searchable: bool
    dimensions: int | None


async def retrieve(
    pool: asyncpg.Pool,
    company_id: uuid.UUID,
    query: str,
    k: int = 5,
    embedder: Embedder | None = None,
    *,
    candidates: int = DEFAULT_CANDIDATES,
    rrf_k: int = DEFAULT_RRF_K,
) -> Retrieval:
    """The `k` chunks of the company's knowledge base that best answer `query`."""
    if k < 1:
        raise ValueError("k must be at least 1")
    query = query.strip()
    name = embedder.name if embedder is not None else None
    async with pool.acquire() as conn:
        stats = await _stats(conn, company_id, query, name)
    use_vectors, note = _plan(stats, embedder, query)
    if stats.total == 0 or not query:
        mode: Mode = "hybrid" if use_vectors else "keyword"
        return Retrieval([], mode, note, name)

    vector_hits: list[tuple[uuid.UUID, float]] = []
    if use_vectors:
        assert embedder is not None
        try:
            [query_vector] = await embedder.embed([query])
        except ShvyaError as err:
            # Better keyword-grounded context than none while the embeddings API is down.
            log.warning("query_embedding_failed", embedder=name, error=str(err))
            use_vectors = False
            note = f"embedding the query failed ({err}): keyword search only"
    pool_k = max(candidates, k)
    async with pool.acquire() as conn:
        keyword_hits: list[tuple[uuid.UUID, float]] = []
        if stats.searchable:
            coverage = HYBRID_MIN_COVERAGE if use_vectors else 0.0
            rows = await conn.fetch(_KEYWORD, company_id, query, stats.configs, pool_k, coverage)
            keyword_hits = [(r["id"], float(r["rank"])) for r in rows]
        if use_vectors:
            async with conn.transaction():
                # Keep scanning the index until enough rows pass the company filter.
                await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                rows = await conn.fetch(_VECTOR, company_id, as_vector(query_vector), name, pool_k)
            vector_hits = [(r["id"], float(r["similarity"])) for r in rows]
        ranked = fuse([vector_hits, keyword_hits], rrf_k)[:k]
        details = {
            r["id"]: r for r in await conn.fetch(_DETAILS, [chunk_id for chunk_id, _ in ranked])
        }
    similarity = dict(vector_hits)
    keyword_rank = dict(keyword_hits)
    chunks = [
        RetrievedChunk(
            doc_id=details[chunk_id]["doc_id"],
            title=details[chunk_id]["title"],
            source=details[chunk_id]["source"],
            content=details[chunk_id]["content"],
            score=score,
            chunk_id=chunk_id,
            heading=details[chunk_id]["heading"],
            chunk_index=details[chunk_id]["chunk_index"],
            vector_similarity=similarity.get(chunk_id),
            keyword_rank=keyword_rank.get(chunk_id),
        )
        for chunk_id, score in ranked
        if chunk_id in details  # a document deleted between the two queries
    ]
    if use_vectors and stats.searchable:
        mode = "hybrid"
    elif use_vectors:
        mode = "vector"
        note = note or "the question has no searchable words: vector search only"
    else:
        mode = "keyword"
        if not stats.searchable:
            note = note or "the question has no searchable words and there is no vector search"
    return Retrieval(chunks, mode, note, name)


def fuse(
    rankings: list[list[tuple[uuid.UUID, float]]], rrf_k: int = DEFAULT_RRF_K
) -> list[tuple[uuid.UUID, float]]:
    """Reciprocal rank fusion of best-first rankings: (id, score), best first.

    Equal scores go to the item ranked higher by any list, then to the earlier list, so the
    order never depends on the ids.
    """
    scores: dict[uuid.UUID, float] = {}
    best: dict[uuid.UUID, tuple[int, int]] = {}
    for arm, ranking in enumerate(rankings):
        for rank, (item, _) in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (rrf_k + rank)
            best[item] = min(best.get(item, (rank, arm)), (rank, arm))
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]]))


async def _stats(
    conn: asyncpg.Connection, company_id: uuid.UUID, query: str, embedder_name: str | None
) -> _Stats:
    row = await conn.fetchrow(_STATS, company_id, embedder_name, query)
    assert row is not None
    dims = row["dimensions"]
    return _Stats(
        total=row["total"],
        ready=row["ready"],
        configs=list(row["configs"]),
        searchable=bool(row["searchable"]),
        dimensions=int(dims) if dims is not None and dims > 0 else None,
    )


def _plan(stats: _Stats, embedder: Embedder | None, query: str) -> tuple[bool, str | None]:
    """Whether to run the vector search, and the note that explains a search not run."""
    if not query:
        return embedder is not None, "empty query"
    if stats.total == 0:
        return embedder is not None, "this company's knowledge base is empty"
    if embedder is None:
        return False, "no embedder configured (EMBEDDINGS_PROVIDER): keyword search only"
    if stats.dimensions is not None and stats.dimensions != embedder.dimensions:
        return False, (
            f"the knowledge base stores {stats.dimensions}-dimension vectors but {embedder.name} "
            f"makes {embedder.dimensions}: run `shvya reembed`; keyword search only"
        )
    if stats.ready == 0:
        return False, (
            f"none of the {stats.total} chunks is embedded with {embedder.name}: run "
            "`shvya reembed`; keyword search only"
        )
    if stats.ready < stats.total:
        return True, (
            f"{stats.total - stats.ready} of {stats.total} chunks are not embedded with "
            f"{embedder.name} and are found by keyword only: run `shvya reembed`"
        )
    return True, None
