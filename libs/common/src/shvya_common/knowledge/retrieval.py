"""Hybrid retrieval: vector similarity and keyword rank, fused with reciprocal rank fusion.

`retrieve()` runs two searches over one company's chunks and merges their rankings:

- vector: cosine distance to the query's embedding through the HNSW index, over the chunks whose
  vector was made by the same model (vectors of different models are never compared);
- keyword: PostgreSQL full text over a GIN index. Requiring every word of a question
  (`websearch_to_tsquery`) misses most natural questions, so a chunk matches on any of the
  question's lexemes, each weighed by its rarity (BM25's idf) and by `ts_rank_cd`, which favours
  matches in titles and headings. The counts behind idf are kept by the writes (`ai_kb_counts`,
  `ai_kb_terms`), and the chunks with every word are ranked first, so a search over a large
  knowledge base reads its statistics and the chunks it ranks, not all of the company's rows.

Each chunk's score is the sum of 1 / (rrf_k + rank) over the searches that found it. `mode` says
which searches ran and `note` says why one did not (no embedder, chunks not yet embedded with
this model, the embeddings API failing, a question with no searchable words), so a caller never
mistakes a keyword-only answer for a hybrid one.
"""

from __future__ import annotations

import math
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

# The counts come from `ai_kb_counts`, which the chunks' writes keep (0019), not from the chunks.
_STATS = """
WITH mine AS (SELECT * FROM ai_kb_counts WHERE company_id = $1 AND chunks > 0)
SELECT
    (SELECT coalesce(sum(chunks), 0) FROM mine)::int AS total,
    (SELECT coalesce(sum(chunks), 0) FROM mine WHERE embedding_model = $2)::int AS ready,
    (SELECT coalesce(array_agg(DISTINCT ts_config::text), '{}') FROM mine) AS configs,
    (SELECT coalesce(bool_or(length(to_tsvector(ts_config, $3)) > 0), false) FROM mine)
        AS searchable,
    (SELECT atttypmod FROM pg_attribute
     WHERE attrelid = 'ai_kb_docs'::regclass AND attname = 'embedding') AS dimensions
"""

# The question's lexemes in each configuration with their document frequency (`ai_kb_terms`,
# kept by the writes) and the company's number of chunks.
_TERMS = """
SELECT q.cfg::text AS cfg, q.lexeme, coalesce(t.df, 0)::float8 AS df,
       (SELECT coalesce(sum(chunks), 0) FROM ai_kb_counts WHERE company_id = $1)::float8 AS n
FROM (SELECT DISTINCT cfg::regconfig AS cfg, lexeme
      FROM unnest($2::text[]) AS cfg,
           unnest(tsvector_to_array(to_tsvector(cfg::regconfig, $3))) AS lexeme) q
LEFT JOIN ai_kb_terms t ON t.company_id = $1 AND t.ts_config = q.cfg AND t.lexeme = q.lexeme
ORDER BY 1, 2
"""

# A chunk that matches its configuration's filter (`f.q`: all of the question's words, or any;
# found by one index scan) scores the sum, over the words it contains, of idf * (1 + ts_rank_cd),
# the rank normalised into [0, 1) (flag 32: rank / (rank + 1)); it favours title and heading
# matches. It is kept only if its words carry at least $7 of the question's weight (words absent
# from the knowledge base included). Lexemes are quoted for tsquery input: quotes and
# backslashes doubled.
_RANK = r"""
WITH w AS (
    SELECT cfg::regconfig AS cfg, idf, df,
           ('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''')::tsquery AS tq
    FROM unnest($2::text[], $3::text[], $4::float8[], $5::float8[]) AS w(cfg, lexeme, idf, df)
),
mass AS (SELECT cfg, sum(idf) AS total FROM w GROUP BY cfg),
f AS (
    SELECT cfg::regconfig AS cfg, q::tsquery AS q
    FROM unnest($8::text[], $9::text[]) AS f(cfg, q)
)
SELECT c.id, s.rank
FROM f
JOIN ai_kb_docs c ON c.company_id = $1 AND c.ts_config = f.cfg AND c.tsv @@ f.q
JOIN mass m ON m.cfg = c.ts_config
CROSS JOIN LATERAL (
    SELECT sum(w.idf * (1 + ts_rank_cd(c.tsv, w.tq, 32))) AS rank, sum(w.idf) AS carried
    FROM w WHERE w.cfg = c.ts_config AND w.df > 0 AND c.tsv @@ w.tq
) s
WHERE s.carried >= $7 * m.total
ORDER BY s.rank DESC, c.title, c.chunk_index, c.id
LIMIT $6
"""


@dataclass(frozen=True)
class _Term:
    cfg: str
    lexeme: str
    df: float
    idf: float


def _weigh(rows: list[asyncpg.Record]) -> list[_Term]:
    """Each lexeme of the question weighed by its rarity among the company's chunks (BM25's idf,
    ln((N - df + 0.5) / (df + 0.5))): words in half the chunks or more weigh nothing, unless no
    word is rarer (a tiny knowledge base), when each counts 1."""
    terms = [
        _Term(r["cfg"], r["lexeme"], r["df"], math.log((r["n"] - r["df"] + 0.5) / (r["df"] + 0.5)))
        for r in rows
    ]
    if not any(t.idf > 0 and t.df > 0 for t in terms):
        return [_Term(t.cfg, t.lexeme, t.df, 1.0) for t in terms]
    return [t for t in terms if t.idf > 0]


def _tsquery(lexemes: list[str], op: str) -> str:
    """tsquery input joining the lexemes with `op`, each quoted."""
    quoted = ("'" + x.replace("\\", "\\\\").replace("'", "''") + "'" for x in lexemes)
    return f" {op} ".join(quoted)


async def _keyword(
    conn: asyncpg.Connection,
    company_id: uuid.UUID,
    query: str,
    configs: list[str],
    limit: int,
    coverage: float,
) -> list[tuple[uuid.UUID, float]]:
    """The `limit` best keyword matches, best first.

    Ranking every chunk that has any of the question's words is what a search over a large
    knowledge base costs (a common word is in thousands of chunks), so the chunks that have all
    of them are ranked first. A chunk with all the words scores at least the sum P of their idf;
    one missing a word scores less than 2 * the idf of those it has (each word's 1 + rank is
    below 2), so at most 2 * (P - the smallest idf). If the `limit`-th chunk of the first pass
    scores at least that, no chunk missing a word can rank above it and the first pass is the
    answer; otherwise every chunk with any of the words is ranked."""
    terms = await _terms(conn, company_id, configs, query)
    present = [t for t in terms if t.df > 0]
    if not present:
        return []
    if len({t.cfg for t in present}) == 1 and len(present) > 1:
        first = await _ranked(conn, company_id, terms, "&", limit, coverage)
        bound = 2 * (sum(t.idf for t in present) - min(t.idf for t in present))
        if len(first) >= limit and first[-1][1] >= bound:
            return first
    return await _ranked(conn, company_id, terms, "|", limit, coverage)


async def _terms(
    conn: asyncpg.Connection, company_id: uuid.UUID, configs: list[str], query: str
) -> list[_Term]:
    return _weigh(await conn.fetch(_TERMS, company_id, configs, query))


async def _ranked(
    conn: asyncpg.Connection,
    company_id: uuid.UUID,
    terms: list[_Term],
    op: str,
    limit: int,
    coverage: float,
) -> list[tuple[uuid.UUID, float]]:
    """The `limit` best chunks with all (`&`) or any (`|`) of the terms that are in the
    knowledge base, in each configuration, with their rank."""
    lexemes: dict[str, list[str]] = {}
    for t in terms:
        if t.df > 0:
            lexemes.setdefault(t.cfg, []).append(t.lexeme)
    rows = await conn.fetch(
        _RANK,
        company_id,
        [t.cfg for t in terms],
        [t.lexeme for t in terms],
        [t.idf for t in terms],
        [t.df for t in terms],
        limit,
        coverage,
        list(lexemes),
        [_tsquery(words, op) for words in lexemes.values()],
    )
    return [(r["id"], float(r["rank"])) for r in rows]


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
            keyword_hits = await _keyword(conn, company_id, query, stats.configs, pool_k, coverage)
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
