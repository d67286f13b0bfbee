"""The knowledge-base admin API: add, replace, list, read and delete a company's documents, and
search them the way engage does, to see what a question retrieves.

    POST   /v1/kb/documents            add (JSON, or a raw text body)         admin key
    GET    /v1/kb/documents            list                                   admin or agent key
    GET    /v1/kb/documents/{doc_id}   read, with its text                    admin or agent key
    PUT    /v1/kb/documents/{doc_id}   replace content and chunks             admin key
    DELETE /v1/kb/documents/{doc_id}   delete                                 admin key
    POST   /v1/kb/search               retrieve the top chunks                admin or agent key

The company is the calling key's.

A document is JSON with `content` (text, markdown or HTML) or a `url` fetched once, or a raw body
sent as text/markdown, text/plain or text/html with `?title=`. The router owns the embedder and
the HTTP client it fetches with (opened in its lifespan, after the platform's), and these routes
get their own body limit and deadline (`route_limits`), as a document and its embedding take
longer than a message. Embedding failures answer 503 (retry) or 502 (the API refused).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, model_validator

from shvya_common.errors import PermanentError, RetryableError
from shvya_common.knowledge import (
    DocumentInfo,
    KnowledgeBase,
    KnowledgeConfigError,
    NewDocument,
    Retrieval,
    StoredDocument,
    open_embedder,
)
from shvya_common.knowledge.chunking import Format
from shvya_ingest import examples as ex
from shvya_ingest.auth import AdminCompany, AgentCompany
from shvya_ingest.kb_fetch import FetchError, fetch_document
from shvya_ingest.middleware import RouteLimits
from shvya_ingest.settings import IngestSettings
from shvya_ingest.v1.common import ERRORS, V1, DocumentId, Offset, page_limit

log = structlog.get_logger(__name__)

KB_PATHS = re.compile(r"^/v1/kb(/|$)")
RAW_FORMATS: dict[str, Format] = {
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/plain": "text",
    "text/html": "html",
}


def route_limits(settings: IngestSettings) -> RouteLimits:
    """The KB routes' body limit and deadline (JSON escaping can double a text's size)."""
    return RouteLimits(
        KB_PATHS, 2 * settings.kb_max_document_bytes + 65_536, settings.kb_request_timeout_seconds
    )


PRICES = (
    "# Prices and warranty\n\nA 6 kW rooftop system costs 9,800 EUR installed.\n\n"
    "## Warranty\n\nPanels carry a 25-year performance warranty; inverters 10 years."
)


class DocumentIn(BaseModel):
    """A document: its text in `content`, or a `url` to fetch it from once."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra=ex.examples(
            {"title": "Prices and warranty", "content": PRICES, "metadata": {"team": "sales"}},
            {"url": "https://acme.example/pricing"},
        ),
    )

    title: str | None = Field(
        None,
        min_length=1,
        max_length=300,
        description="Defaults to the first heading, the page's <title>, or the first line.",
    )
    format: Literal["text", "markdown", "html"] = Field(
        "markdown", description="How `content` is written; for a URL, its Content-Type decides."
    )
    content: str | None = Field(None, min_length=1)
    url: HttpUrl | None = None
    source: str | None = Field(
        None, max_length=2000, description="Where it came from; defaults to the URL fetched."
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _content_or_url(self) -> DocumentIn:
        if (self.content is None) == (self.url is None):
            raise ValueError("give exactly one of 'content' and 'url'")
        return self


class DocumentOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.DOC_ID,
                "company_id": ex.COMPANY_ID,
                "title": "Prices and warranty",
                "source": "https://acme.example/pricing",
                "format": "markdown",
                "characters": 5320,
                "chunks": 6,
                "embedded_chunks": 6,
                "embedding_models": ["text-embedding-3-small"],
                "metadata": {"team": "sales"},
                "created_at": ex.CREATED,
                "updated_at": ex.UPDATED,
                "note": None,
            }
        )
    )

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
    note: str | None = None

    @classmethod
    def of(cls, info: DocumentInfo, note: str | None = None) -> DocumentOut:
        return cls(**info.__dict__, note=note)


class DocumentDetail(DocumentOut):
    model_config = ConfigDict(
        json_schema_extra=ex.examples({**ex.example_of(DocumentOut), "content": PRICES})
    )

    content: str


class DocumentList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"documents": [ex.example_of(DocumentOut)], "total": 1, "limit": 100, "offset": 0}
        )
    )

    documents: list[DocumentOut]
    total: int
    limit: int
    offset: int


class SearchIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=ex.examples({"query": "How long is the warranty?", "k": 3}),
    )

    query: str = Field(min_length=1, max_length=4000)
    k: int = Field(5, ge=1, le=50)


class ChunkOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "chunk_id": ex.CHUNK_ID,
                "doc_id": ex.DOC_ID,
                "title": "Prices and warranty",
                "heading": "Warranty",
                "source": "https://acme.example/pricing",
                "content": "Panels carry a 25-year performance warranty; inverters 10 years.",
                "score": 0.82,
                "vector_similarity": 0.71,
                "keyword_rank": 0.35,
            }
        )
    )

    chunk_id: uuid.UUID
    doc_id: uuid.UUID
    title: str
    heading: str | None
    source: str | None
    content: str
    score: float
    vector_similarity: float | None
    keyword_rank: float | None


class SearchOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "mode": "hybrid",
                "note": None,
                "embedder": "openai:text-embedding-3-small",
                "chunks": [ex.example_of(ChunkOut)],
            }
        )
    )

    mode: Literal["hybrid", "keyword", "vector"]
    note: str | None
    embedder: str | None
    chunks: list[ChunkOut]

    @classmethod
    def of(cls, result: Retrieval) -> SearchOut:
        return cls(
            mode=result.mode,
            note=result.note,
            embedder=result.embedder,
            chunks=[
                ChunkOut(**{name: getattr(c, name) for name in ChunkOut.model_fields})
                for c in result.chunks
            ],
        )


@dataclass(frozen=True)
class KnowledgeApi:
    """What the routes need: the knowledge base, the fetch client, and the limits."""

    kb: KnowledgeBase
    http: httpx.AsyncClient
    settings: IngestSettings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs inside the app's lifespan, so the platform (and its pool) is already open."""
    settings: IngestSettings = app.state.ingest.settings
    pool = app.state.ingest.plat.pool
    # Requests go to checked IPs (kb_fetch): no keep-alive, so a pooled connection is never
    # reused for another host; no proxies from the environment (they would connect on their own).
    http = httpx.AsyncClient(
        timeout=settings.kb_fetch_timeout_seconds,
        headers={"User-Agent": "SHVYA-knowledge-base"},
        limits=httpx.Limits(max_keepalive_connections=0),
        trust_env=False,
    )
    async with http, open_embedder(settings) as embedder:
        kb = KnowledgeBase.from_settings(pool, embedder, settings)
        problem = await kb.check()
        if problem is not None:
            # Inbound messages must keep flowing: the KB routes answer 409 with this until fixed.
            log.error("kb_misconfigured", problem=problem)
        app.state.kb = KnowledgeApi(kb, http, settings)
        yield


def get_kb(request: Request) -> KnowledgeApi:
    api: KnowledgeApi = request.app.state.kb
    return api


KbDep = Annotated[KnowledgeApi, Depends(get_kb)]

router = APIRouter(
    prefix="/v1/kb",
    dependencies=V1,
    responses=ERRORS,
    tags=["knowledge base"],
    lifespan=lifespan,
)

RawTitle = Annotated[
    str | None, Query(max_length=300, description="A raw text body's title (JSON: `title`).")
]
RawSource = Annotated[
    str | None, Query(max_length=2000, description="A raw text body's source (JSON: `source`).")
]

_DOCUMENT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": DocumentIn.model_json_schema()},
            **{ctype: {"schema": {"type": "string"}} for ctype in RAW_FORMATS},
        },
    }
}


async def _read_document(request: Request, title: str | None, source: str | None) -> DocumentIn:
    """The JSON body, or a raw text body with title and source from the query string."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    if content_type in ("", "application/json"):
        try:
            return DocumentIn.model_validate_json(raw)
        except ValidationError as err:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]
            ) from err
    fmt = RAW_FORMATS.get(content_type)
    if fmt is None:
        raise HTTPException(
            415, f"send JSON or one of {', '.join(RAW_FORMATS)}, not {content_type}"
        )
    params = request.headers.get("content-type", "").split(";")[1:]
    charsets = [p.split("=", 1)[1].strip().strip('"') for p in params if "charset=" in p.lower()]
    try:
        text = raw.decode(charsets[0] if charsets else "utf-8")
    except (UnicodeDecodeError, LookupError) as err:
        raise HTTPException(422, f"the body is not text in the declared charset: {err}") from err
    try:
        return DocumentIn(content=text, format=fmt, title=title, source=source)
    except ValidationError as err:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]
        ) from err


async def _to_new_document(api: KnowledgeApi, body: DocumentIn) -> NewDocument:
    limit = api.settings.kb_max_document_bytes
    if body.content is not None:
        size = len(body.content.encode())
        if size > limit:
            raise HTTPException(413, f"the document is {size} bytes; the limit is {limit}")
        return NewDocument(
            content=body.content,
            format=body.format,
            title=body.title,
            source=body.source,
            metadata=body.metadata,
        )
    assert body.url is not None
    try:
        fetched = await fetch_document(
            api.http,
            str(body.url),
            max_bytes=limit,
            deadline_seconds=api.settings.kb_fetch_timeout_seconds,
            allow_private=api.settings.kb_fetch_allow_private,
        )
    except FetchError as err:
        raise HTTPException(err.status, err.reason) from err
    fmt = body.format if "format" in body.model_fields_set else fetched.format
    metadata = {
        **body.metadata,
        "fetched_url": fetched.url,
        "content_type": fetched.content_type,
        "fetched_at": datetime.now(UTC).isoformat(),
    }
    return NewDocument(
        content=fetched.text,
        format=fmt,
        title=body.title,
        source=body.source or fetched.url,
        metadata=metadata,
    )


async def _require_company(api: KnowledgeApi, company_id: uuid.UUID) -> None:
    if not await api.kb.company_exists(company_id):
        raise HTTPException(404, f"company_id {company_id} does not exist")


async def _store(
    api: KnowledgeApi, company_id: uuid.UUID, doc_id: uuid.UUID | None, doc: NewDocument
) -> StoredDocument | None:
    try:
        if doc_id is None:
            return await api.kb.add_document(company_id, doc)
        return await api.kb.replace_document(company_id, doc_id, doc)
    except ValueError as err:
        raise HTTPException(422, str(err)) from err
    except KnowledgeConfigError as err:
        raise HTTPException(409, str(err)) from err
    except RetryableError as err:
        raise HTTPException(
            503, f"embedding failed, retry later: {err}", headers={"Retry-After": "5"}
        ) from err
    except PermanentError as err:
        raise HTTPException(502, f"embedding failed: {err}") from err


@router.post(
    "/documents", status_code=201, response_model=DocumentOut, openapi_extra=_DOCUMENT_BODY
)
async def add_document(
    company_id: AdminCompany,
    request: Request,
    api: KbDep,
    title: RawTitle = None,
    source: RawSource = None,
) -> DocumentOut:
    """Chunk, embed and store a document; it is searchable as soon as this answers."""
    await _require_company(api, company_id)
    doc = await _to_new_document(api, await _read_document(request, title, source))
    stored = await _store(api, company_id, None, doc)
    assert stored is not None
    return DocumentOut.of(stored.info, stored.note)


@router.put("/documents/{doc_id}", response_model=DocumentOut, openapi_extra=_DOCUMENT_BODY)
async def replace_document(
    company_id: AdminCompany,
    doc_id: DocumentId,
    request: Request,
    api: KbDep,
    title: RawTitle = None,
    source: RawSource = None,
) -> DocumentOut:
    """Replace a document's content; its old chunks are gone when this answers."""
    await _require_company(api, company_id)
    doc = await _to_new_document(api, await _read_document(request, title, source))
    stored = await _store(api, company_id, doc_id, doc)
    if stored is None:
        raise HTTPException(404, f"document {doc_id} does not exist in company {company_id}")
    return DocumentOut.of(stored.info, stored.note)


@router.get("/documents", response_model=DocumentList)
async def list_documents(
    company_id: AgentCompany,
    api: KbDep,
    limit: Annotated[int, page_limit(500)] = 100,
    offset: Offset = 0,
) -> DocumentList:
    await _require_company(api, company_id)
    infos, total = await api.kb.list_documents(company_id, limit=limit, offset=offset)
    return DocumentList(
        documents=[DocumentOut.of(i) for i in infos], total=total, limit=limit, offset=offset
    )


@router.get("/documents/{doc_id}", response_model=DocumentDetail)
async def get_document(company_id: AgentCompany, doc_id: DocumentId, api: KbDep) -> DocumentDetail:
    found = await api.kb.get_document(company_id, doc_id)
    if found is None:
        raise HTTPException(404, f"document {doc_id} does not exist in company {company_id}")
    info, content = found
    return DocumentDetail(**info.__dict__, content=content)


@router.delete("/documents/{doc_id}", status_code=204)
async def delete_document(company_id: AdminCompany, doc_id: DocumentId, api: KbDep) -> Response:
    if not await api.kb.delete_document(company_id, doc_id):
        raise HTTPException(404, f"document {doc_id} does not exist in company {company_id}")
    return Response(status_code=204)


@router.post("/search", response_model=SearchOut)
async def search(company_id: AgentCompany, body: SearchIn, api: KbDep) -> SearchOut:
    """What retrieval returns for a question: the chunks engage would put in a prompt."""
    await _require_company(api, company_id)
    return SearchOut.of(await api.kb.search(company_id, body.query, body.k))
