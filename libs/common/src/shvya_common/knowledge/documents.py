"""Writing the knowledge base: a document in; its chunks, vectors and search index stored.

`KnowledgeBase` is what ingest's API (and anything else that loads documents) calls. A document
is converted (HTML to text), cut into chunks, embedded outside any transaction, then stored with
its chunks in one transaction, so a reader never sees half a document. Replacing a document
swaps all of its chunks at once. With no embedder, chunks are stored without vectors, are found
by keyword search, and `shvya reembed` embeds them later.

    ShvyaError
    └── PermanentError
        └── KnowledgeConfigError   the embedder and the database disagree (vector size,
                                   text-search configuration); fixed by settings or reembed
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from shvya_common.errors import PermanentError
from shvya_common.knowledge.chunking import Chunk, Format, chunk_document
from shvya_common.knowledge.embedders import Embedder
from shvya_common.knowledge.htmltext import html_to_text
from shvya_common.knowledge.repository import DocumentInfo, KnowledgeRepository
from shvya_common.knowledge.retrieval import Retrieval, retrieve
from shvya_common.knowledge.settings import KnowledgeSettings

log = structlog.get_logger(__name__)

TITLE_MAX = 300
_MARKDOWN_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


class KnowledgeConfigError(PermanentError):
    """The knowledge base cannot be written as configured; the message says what to change."""


@dataclass(frozen=True)
class NewDocument:
    """A document to store. `format` html is converted to text before anything else."""

    content: str
    format: Format = "markdown"
    title: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredDocument:
    """The stored document, and a note when its chunks could not all be embedded."""

    info: DocumentInfo
    note: str | None = None


def embedding_text(title: str, heading: str | None, content: str) -> str:
    """What is embedded for a chunk: its text with the document title and heading path above."""
    return "\n".join(part for part in (title, heading, content) if part)


def default_title(content: str, fmt: Format) -> str:
    """A title for a document uploaded without one: its first heading, else its first line."""
    if fmt == "markdown":
        match = _MARKDOWN_HEADING.search(content)
        if match:
            return match.group(1)[:TITLE_MAX]
    for line in content.splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip()[:TITLE_MAX] or "Untitled"
    return "Untitled"


def prepare(doc: NewDocument) -> tuple[str, Format, str]:
    """(title, format, text) of a document: HTML converted, a missing title filled in."""
    fmt: Format = doc.format
    text = doc.content
    title = doc.title.strip() if doc.title else None
    if fmt == "html":
        html_title, text = html_to_text(text)
        title = title or html_title
    text = text.strip()
    if not text:
        after = " after HTML conversion" if doc.format == "html" else ""
        raise ValueError(f"the document has no text{after}")
    chunk_format: Format = "text" if fmt == "text" else "markdown"
    return (title or default_title(text, chunk_format))[:TITLE_MAX], fmt, text


class KnowledgeBase:
    """Add, replace, list, delete and search one company's documents."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        embedder: Embedder | None,
        *,
        chunk_chars: int = 1000,
        overlap_chars: int = 150,
        text_search_config: str = "english",
    ) -> None:
        self.pool = pool
        self.embedder = embedder
        self.chunk_chars = chunk_chars
        self.overlap_chars = overlap_chars
        self.text_search_config = text_search_config
        self.repo = KnowledgeRepository()
        self._config_checked = False

    @classmethod
    def from_settings(
        cls, pool: asyncpg.Pool, embedder: Embedder | None, settings: KnowledgeSettings
    ) -> KnowledgeBase:
        return cls(
            pool,
            embedder,
            chunk_chars=settings.kb_chunk_chars,
            overlap_chars=settings.kb_chunk_overlap_chars,
            text_search_config=settings.kb_text_search_config,
        )

    async def company_exists(self, company_id: uuid.UUID) -> bool:
        async with self.pool.acquire() as conn:
            return await self.repo.company_exists(conn, company_id)

    async def check(self) -> str | None:
        """What stops documents from being stored as configured, or None when all is well."""
        async with self.pool.acquire() as conn:
            return await self._problem(conn)

    async def add_document(self, company_id: uuid.UUID, doc: NewDocument) -> StoredDocument:
        stored = await self._store(company_id, None, doc)
        assert stored is not None  # only a replacement can miss its document
        return stored

    async def replace_document(
        self, company_id: uuid.UUID, doc_id: uuid.UUID, doc: NewDocument
    ) -> StoredDocument | None:
        """Swap the document's content and chunks; None if the company has no such document."""
        return await self._store(company_id, doc_id, doc)

    async def delete_document(self, company_id: uuid.UUID, doc_id: uuid.UUID) -> bool:
        async with self.pool.acquire() as conn:
            deleted = await self.repo.delete_document(conn, company_id, doc_id)
        if deleted:
            log.info("kb_document_deleted", company_id=str(company_id), doc_id=str(doc_id))
        return deleted

    async def get_document(
        self, company_id: uuid.UUID, doc_id: uuid.UUID
    ) -> tuple[DocumentInfo, str] | None:
        async with self.pool.acquire() as conn:
            return await self.repo.get_document(conn, company_id, doc_id)

    async def list_documents(
        self, company_id: uuid.UUID, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[DocumentInfo], int]:
        async with self.pool.acquire() as conn:
            return await self.repo.list_documents(conn, company_id, limit=limit, offset=offset)

    async def search(self, company_id: uuid.UUID, query: str, k: int = 5) -> Retrieval:
        return await retrieve(self.pool, company_id, query, k, self.embedder)

    async def _problem(self, conn: asyncpg.Connection) -> str | None:
        if not self._config_checked:
            known = await conn.fetchval(
                "SELECT 1 FROM pg_ts_config WHERE cfgname = $1", self.text_search_config
            )
            if known is None:
                return (
                    f"KB_TEXT_SEARCH_CONFIG={self.text_search_config} is not a PostgreSQL "
                    "text-search configuration (see `SELECT cfgname FROM pg_ts_config`)"
                )
            self._config_checked = True
        if self.embedder is not None:
            size = await self.repo.vector_dimensions(conn)
            if size is not None and size != self.embedder.dimensions:
                return (
                    f"the knowledge base stores {size}-dimension vectors but {self.embedder.name} "
                    f"makes {self.embedder.dimensions}: run `shvya reembed` to resize and re-embed"
                )
        return None

    async def _store(
        self, company_id: uuid.UUID, doc_id: uuid.UUID | None, doc: NewDocument
    ) -> StoredDocument | None:
        # Parsing a large HTML page or cutting a long text takes a while: not on the event loop.
        title, fmt, text = await asyncio.to_thread(prepare, doc)
        chunks = await asyncio.to_thread(
            chunk_document,
            text,
            "text" if fmt == "text" else "markdown",
            max_chars=self.chunk_chars,
            overlap_chars=self.overlap_chars,
        )
        async with self.pool.acquire() as conn:
            problem = await self._problem(conn)
        if problem is not None:
            raise KnowledgeConfigError(problem)
        vectors = await self._embed(title, chunks)
        digest = hashlib.sha256(text.encode()).hexdigest()
        model = self.embedder.name if self.embedder is not None and vectors is not None else None
        async with self.pool.acquire() as conn, conn.transaction():
            if doc_id is None:
                doc_id = await self.repo.insert_document(
                    conn,
                    company_id=company_id,
                    title=title,
                    source=doc.source,
                    fmt=fmt,
                    content=text,
                    content_sha256=digest,
                    metadata=doc.metadata,
                )
                action = "kb_document_added"
            else:
                found = await self.repo.update_document(
                    conn,
                    company_id=company_id,
                    doc_id=doc_id,
                    title=title,
                    source=doc.source,
                    fmt=fmt,
                    content=text,
                    content_sha256=digest,
                    metadata=doc.metadata,
                )
                if not found:
                    return None
                action = "kb_document_replaced"
            await self.repo.insert_chunks(
                conn,
                company_id=company_id,
                doc_id=doc_id,
                title=title,
                source=doc.source,
                chunks=chunks,
                vectors=vectors,
                embedding_model=model,
                ts_config=self.text_search_config,
            )
            stored = await self.repo.get_document(conn, company_id, doc_id)
        assert stored is not None
        log.info(
            action,
            company_id=str(company_id),
            doc_id=str(doc_id),
            chunks=len(chunks),
            embedder=model or "none",
        )
        note = (
            None
            if vectors is not None
            else (
                "stored without vectors (no embedder configured): found by keyword search until "
                "`shvya reembed` runs with an embedder"
            )
        )
        return StoredDocument(stored[0], note)

    async def _embed(self, title: str, chunks: list[Chunk]) -> list[list[float]] | None:
        if self.embedder is None or not chunks:
            return None
        return await self.embedder.embed(
            [embedding_text(title, chunk.heading, chunk.text) for chunk in chunks]
        )
