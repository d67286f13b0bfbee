"""Re-embedding the knowledge base after a change of embedding model or vector size.

Chunks whose vector is missing or was made by another model are embedded again in batches,
in id order, and marked with the new model's name, so a run that stops half-way resumes where it
stopped. When the configured vector size differs from the column's, the column is resized first
(which clears every vector, for all companies). The text-search configuration of the chunks is
brought to KB_TEXT_SEARCH_CONFIG in the same run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import structlog

from shvya_common.knowledge.documents import KnowledgeConfigError, embedding_text
from shvya_common.knowledge.embedders import Embedder
from shvya_common.knowledge.repository import KnowledgeRepository

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ReembedReport:
    embedder: str
    dimensions: int
    # The column's size before this run, when the run changed it.
    resized_from: int | None
    embedded: int
    reindexed: int


async def reembed(
    pool: asyncpg.Pool,
    embedder: Embedder,
    *,
    company_id: uuid.UUID | None = None,
    everything: bool = False,
    batch_size: int = 64,
    text_search_config: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReembedReport:
    """Embed every chunk (of one company, or all) not yet embedded with `embedder`.

    `everything` re-embeds chunks already marked with this model too (e.g. after the model
    behind the same name changed).
    """
    repo = KnowledgeRepository()
    async with pool.acquire() as conn:
        size = await repo.vector_dimensions(conn)
    resized_from = None
    if size != embedder.dimensions:
        if company_id is not None:
            raise KnowledgeConfigError(
                f"the vector column holds {size} dimensions and {embedder.name} makes "
                f"{embedder.dimensions}: resizing clears every company's vectors, so run "
                "`shvya reembed` without --company"
            )
        async with pool.acquire() as conn, conn.transaction():
            await repo.resize_vectors(conn, embedder.dimensions)
        resized_from = size
        log.info("kb_vectors_resized", old=size, new=embedder.dimensions)
    reindexed = 0
    if text_search_config is not None:
        async with pool.acquire() as conn:
            reindexed = await repo.set_text_search_config(conn, text_search_config, company_id)
    embedded = 0
    after: uuid.UUID | None = None
    while True:
        async with pool.acquire() as conn:
            batch = await repo.stale_chunks(
                conn,
                embedding_model=embedder.name,
                company_id=company_id,
                after=after,
                limit=batch_size,
                everything=everything,
            )
        if not batch:
            break
        vectors = await embedder.embed(
            [embedding_text(c.title, c.heading, c.content) for c in batch]
        )
        async with pool.acquire() as conn:
            await repo.set_vectors(
                conn, [(c.id, v) for c, v in zip(batch, vectors, strict=True)], embedder.name
            )
        embedded += len(batch)
        after = batch[-1].id
        if progress is not None:
            progress(embedded)
    log.info(
        "kb_reembedded",
        embedder=embedder.name,
        chunks=embedded,
        reindexed=reindexed,
        company_id=str(company_id) if company_id else None,
    )
    return ReembedReport(embedder.name, embedder.dimensions, resized_from, embedded, reindexed)
