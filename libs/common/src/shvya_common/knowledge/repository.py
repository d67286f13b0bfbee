"""The knowledge base's SQL: documents, their chunks and vectors, and the vector column's size.

One document is a row of ai_kb_documents; its chunks are rows of ai_kb_docs, written and
replaced together in the caller's transaction. Vectors travel in pgvector's binary form
(`pgvector.asyncpg.register_vector`, installed on every pooled connection by
`shvya_common.db.create_pool`): four bytes a dimension, with nothing to print or parse.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import asyncpg
from pgvector import Vector

from shvya_common.knowledge.chunking import Chunk

HNSW_INDEX = "ai_kb_docs_embedding_hnsw"
MAX_VECTOR_DIMENSIONS = 2000  # pgvector's limit for an HNSW index on `vector`


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form of a vector (for SQL typed by hand; queries pass `as_vector`)."""
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def as_vector(vector: Sequence[float]) -> Vector:
    """A vector for the binary codec: any sequence of floats (or a numpy array)."""
    if isinstance(vector, Vector):
        return vector
    if isinstance(vector, list):
        return Vector(vector)
    if hasattr(vector, "ndim"):  # a numpy array (the offline embedder's output)
        return Vector(cast(Any, vector))
    return Vector([float(x) for x in vector])


@dataclass(frozen=True)
class DocumentInfo:
    """A document as listed: what it is and how much of it is embedded, without its text."""

    id: uuid.UUID
    company_id: uuid.UUID
    title: str
    source: str | None
    format: str
    characters: int
    chunks: int
    embedded_chunks: int
    embedding_models: list[str]
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StaleChunk:
    """A chunk whose vector is missing or was made by another model."""

    id: uuid.UUID
    title: str
    heading: str | None
    content: str


_DOCUMENT_COLUMNS = """
    d.id, d.company_id, d.title, d.source, d.format, length(d.content) AS characters,
    d.metadata, d.created_at, d.updated_at,
    (SELECT count(*) FROM ai_kb_docs c WHERE c.doc_id = d.id)::int AS chunks,
    (SELECT count(*) FROM ai_kb_docs c WHERE c.doc_id = d.id AND c.embedding IS NOT NULL)::int
        AS embedded_chunks,
    ARRAY(SELECT DISTINCT c.embedding_model FROM ai_kb_docs c
          WHERE c.doc_id = d.id AND c.embedding_model IS NOT NULL ORDER BY 1) AS embedding_models
"""


def _info(row: asyncpg.Record) -> DocumentInfo:
    return DocumentInfo(
        id=row["id"],
        company_id=row["company_id"],
        title=row["title"],
        source=row["source"],
        format=row["format"],
        characters=row["characters"],
        chunks=row["chunks"],
        embedded_chunks=row["embedded_chunks"],
        embedding_models=list(row["embedding_models"]),
        metadata=row["metadata"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class KnowledgeRepository:
    """Verb-noun methods over the knowledge-base tables; callers own connections and transactions.

    No method opens a transaction: `insert_document` with `insert_chunks` belong in one.
    """

    async def company_exists(self, conn: asyncpg.Connection, company_id: uuid.UUID) -> bool:
        found = await conn.fetchval("SELECT 1 FROM companies WHERE id = $1", company_id)
        return found is not None

    async def insert_document(
        self,
        conn: asyncpg.Connection,
        *,
        company_id: uuid.UUID,
        title: str,
        source: str | None,
        fmt: str,
        content: str,
        content_sha256: str,
        metadata: dict[str, Any],
    ) -> uuid.UUID:
        doc_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO ai_kb_documents (company_id, title, source, format, content,"
            " content_sha256, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            company_id,
            title,
            source,
            fmt,
            content,
            content_sha256,
            metadata,
        )
        return doc_id

    async def update_document(
        self,
        conn: asyncpg.Connection,
        *,
        company_id: uuid.UUID,
        doc_id: uuid.UUID,
        title: str,
        source: str | None,
        fmt: str,
        content: str,
        content_sha256: str,
        metadata: dict[str, Any],
    ) -> bool:
        """Replace a document's fields and drop its chunks; False if it does not exist."""
        updated = await conn.fetchval(
            "UPDATE ai_kb_documents SET title = $3, source = $4, format = $5, content = $6,"
            " content_sha256 = $7, metadata = $8, updated_at = now()"
            " WHERE id = $1 AND company_id = $2 RETURNING id",
            doc_id,
            company_id,
            title,
            source,
            fmt,
            content,
            content_sha256,
            metadata,
        )
        if updated is None:
            return False
        await conn.execute("DELETE FROM ai_kb_docs WHERE doc_id = $1", doc_id)
        return True

    async def insert_chunks(
        self,
        conn: asyncpg.Connection,
        *,
        company_id: uuid.UUID,
        doc_id: uuid.UUID,
        title: str,
        source: str | None,
        chunks: Sequence[Chunk],
        vectors: Sequence[Sequence[float]] | None,
        embedding_model: str | None,
        ts_config: str,
    ) -> None:
        rows = [
            (
                company_id,
                doc_id,
                title,
                source,
                chunk.text,
                chunk.index,
                chunk.heading,
                as_vector(vectors[i]) if vectors is not None else None,
                embedding_model if vectors is not None else None,
                ts_config,
            )
            for i, chunk in enumerate(chunks)
        ]
        await conn.executemany(
            "INSERT INTO ai_kb_docs (company_id, doc_id, title, source, content, chunk_index,"
            " heading, embedding, embedding_model, ts_config)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::regconfig)",
            rows,
        )

    async def get_document(
        self, conn: asyncpg.Connection, company_id: uuid.UUID, doc_id: uuid.UUID
    ) -> tuple[DocumentInfo, str] | None:
        row = await conn.fetchrow(
            f"SELECT {_DOCUMENT_COLUMNS}, d.content FROM ai_kb_documents d"
            " WHERE d.id = $1 AND d.company_id = $2",
            doc_id,
            company_id,
        )
        return (_info(row), row["content"]) if row is not None else None

    async def list_documents(
        self, conn: asyncpg.Connection, company_id: uuid.UUID, *, limit: int, offset: int
    ) -> tuple[list[DocumentInfo], int]:
        rows = await conn.fetch(
            f"SELECT {_DOCUMENT_COLUMNS} FROM ai_kb_documents d WHERE d.company_id = $1"
            " ORDER BY d.created_at, d.id LIMIT $2 OFFSET $3",
            company_id,
            limit,
            offset,
        )
        total: int = await conn.fetchval(
            "SELECT count(*) FROM ai_kb_documents WHERE company_id = $1", company_id
        )
        return [_info(r) for r in rows], total

    async def delete_document(
        self, conn: asyncpg.Connection, company_id: uuid.UUID, doc_id: uuid.UUID
    ) -> bool:
        deleted = await conn.fetchval(
            "DELETE FROM ai_kb_documents WHERE id = $1 AND company_id = $2 RETURNING id",
            doc_id,
            company_id,
        )
        return deleted is not None

    async def vector_dimensions(self, conn: asyncpg.Connection) -> int | None:
        """The size of the embedding column (pgvector keeps it as the type modifier)."""
        typmod = await conn.fetchval(
            "SELECT atttypmod FROM pg_attribute"
            " WHERE attrelid = 'ai_kb_docs'::regclass AND attname = 'embedding'"
        )
        return int(typmod) if typmod is not None and typmod > 0 else None

    async def resize_vectors(self, conn: asyncpg.Connection, dimensions: int) -> None:
        """Give the embedding column a new size; every vector is cleared (re-embed afterwards).

        Run inside a transaction. DDL takes no parameters, so the size is checked to be a plain
        integer in range before it is written into the statement.
        """
        if not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_VECTOR_DIMENSIONS:
            raise ValueError(f"vector size must be 1..{MAX_VECTOR_DIMENSIONS}, not {dimensions!r}")
        await conn.execute(f"DROP INDEX IF EXISTS {HNSW_INDEX}")
        await conn.execute(
            "UPDATE ai_kb_docs SET embedding = NULL, embedding_model = NULL"
            " WHERE embedding IS NOT NULL OR embedding_model IS NOT NULL"
        )
        await conn.execute(
            f"ALTER TABLE ai_kb_docs ALTER COLUMN embedding TYPE vector({int(dimensions)})"
            " USING NULL"
        )
        await conn.execute(
            f"CREATE INDEX {HNSW_INDEX} ON ai_kb_docs USING hnsw (embedding vector_cosine_ops)"
        )

    async def stale_chunks(
        self,
        conn: asyncpg.Connection,
        *,
        embedding_model: str,
        company_id: uuid.UUID | None,
        after: uuid.UUID | None,
        limit: int,
        everything: bool = False,
    ) -> list[StaleChunk]:
        """Chunks (in id order, after `after`) without a vector from `embedding_model`."""
        rows = await conn.fetch(
            "SELECT id, title, heading, content FROM ai_kb_docs"
            " WHERE ($1::uuid IS NULL OR company_id = $1)"
            "   AND ($2::uuid IS NULL OR id > $2)"
            "   AND ($5 OR embedding IS NULL OR embedding_model IS DISTINCT FROM $3)"
            " ORDER BY id LIMIT $4",
            company_id,
            after,
            embedding_model,
            limit,
            everything,
        )
        return [StaleChunk(r["id"], r["title"], r["heading"], r["content"]) for r in rows]

    async def set_vectors(
        self,
        conn: asyncpg.Connection,
        rows: Sequence[tuple[uuid.UUID, Sequence[float]]],
        embedding_model: str,
    ) -> None:
        await conn.executemany(
            "UPDATE ai_kb_docs SET embedding = $2, embedding_model = $3, updated_at = now()"
            " WHERE id = $1",
            [(chunk_id, as_vector(vector), embedding_model) for chunk_id, vector in rows],
        )

    async def set_text_search_config(
        self, conn: asyncpg.Connection, ts_config: str, company_id: uuid.UUID | None
    ) -> int:
        """Re-index chunks in another text-search configuration; returns how many changed."""
        status: str = await conn.execute(
            "UPDATE ai_kb_docs SET ts_config = $1::regconfig"
            " WHERE ts_config <> $1::regconfig AND ($2::uuid IS NULL OR company_id = $2)",
            ts_config,
            company_id,
        )
        return int(status.rsplit(" ", 1)[-1])
