"""The knowledge-base admin API in ingest, in-process against real NATS and PostgreSQL, with the
real `openai` SDK embedding through a local server that speaks the embeddings wire format, and
documents fetched from a local web server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from aiohttp import web

from shvya_ingest.app import create_app
from shvya_ingest.settings import IngestSettings
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.keys import bearer, make_key

pytestmark = pytest.mark.integration

PRICING = """# Plans and pricing

## City plan

The City plan costs 39 euros per month and includes servicing.

## Cargo plan

The Cargo plan carries two children and costs 89 euros per month.
"""

PAGE = """<!doctype html><html><head><title>Velora returns</title></head><body>
<nav>Home | Shop</nav><h1>Returns</h1><p>Every subscription starts with a 14-day trial.</p>
<h2>Pick-up</h2><p>We collect the bike from your address at no cost.</p>
<script>track()</script></body></html>"""


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test", default_dimensions=384) as server:
        yield server


@pytest.fixture
async def website() -> AsyncIterator[str]:
    """A local web server with the kinds of page an admin may point the knowledge base at."""

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8")

    async def markdown(_: web.Request) -> web.Response:
        return web.Response(text=PRICING, content_type="text/markdown")

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/returns.html")

    async def pdf(_: web.Request) -> web.Response:
        return web.Response(body=b"%PDF-1.7", content_type="application/pdf")

    async def huge(_: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(_)
        for _i in range(64):
            await response.write(b"word " * 1024)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/returns.html", page)
    app.router.add_get("/pricing.md", markdown)
    app.router.add_get("/old-returns", moved)
    app.router.add_get("/brochure.pdf", pdf)
    app.router.add_get("/huge.txt", huge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@asynccontextmanager
async def kb_client(env: dict[str, str], **overrides: str) -> AsyncIterator[httpx.AsyncClient]:
    values = {k.lower(): v for k, v in {**env, **overrides}.items()}
    app = create_app(IngestSettings(**values))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://ingest",
            headers={"Authorization": f"Bearer {env['TEST_API_KEY']}"},
            timeout=60,
        ) as client:
            yield client


@pytest.fixture
async def kb_env(
    base_env: dict[str, str], fake_openai: FakeOpenAI, company: uuid.UUID, db_url: str
) -> dict[str, str]:
    """The ingest environment, plus an admin key of `company` that kb_client sends."""
    return {
        **base_env,
        "TEST_API_KEY": await make_key(db_url, company),
        "EMBEDDINGS_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "EMBEDDINGS_MAX_RETRIES": "0",
        "KB_FETCH_ALLOW_PRIVATE": "true",
    }


@pytest.fixture
async def company(db_url: str) -> uuid.UUID:
    conn = await asyncpg.connect(db_url)
    try:
        company_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO companies (name) VALUES ('Velora') RETURNING id"
        )
        return company_id
    finally:
        await conn.close()


async def chunk_count(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM ai_kb_docs")
        return count
    finally:
        await conn.close()


def docs(company: uuid.UUID) -> str:
    """The documents of the company whose key the client carries."""
    return "/v1/kb/documents"


async def test_documents_are_added_listed_read_searched_replaced_and_deleted(
    kb_env, company, db_url, fake_openai
):
    """The whole document life cycle over HTTP: each step is visible in search and storage."""
    async with kb_client(kb_env) as client:
        added = await client.post(docs(company), json={"content": PRICING, "source": "wiki"})
        assert added.status_code == 201, added.text
        doc = added.json()
        assert doc["title"] == "Plans and pricing" and doc["source"] == "wiki"
        assert doc["format"] == "markdown" and doc["chunks"] == 2
        assert doc["embedded_chunks"] == 2 and doc["note"] is None
        assert doc["embedding_models"] == ["openai:text-embedding-3-small@384"]
        assert fake_openai.embedding_requests()[0].body["dimensions"] == 384

        listed = (await client.get(docs(company))).json()
        assert listed["total"] == 1 and [d["id"] for d in listed["documents"]] == [doc["id"]]
        read = (await client.get(f"{docs(company)}/{doc['id']}")).json()
        assert read["content"] == PRICING.strip()

        search = await client.post("/v1/kb/search", json={"query": "cargo bike price", "k": 2})
        assert search.status_code == 200, search.text
        result = search.json()
        assert result["mode"] == "hybrid" and result["note"] is None
        assert result["embedder"] == "openai:text-embedding-3-small@384"
        top = result["chunks"][0]
        assert top["doc_id"] == doc["id"] and top["heading"] == "Plans and pricing > Cargo plan"
        assert "89 euros" in top["content"] and top["score"] > 0

        replaced = await client.put(
            f"{docs(company)}/{doc['id']}",
            json={"content": "# Plans\n\nOne plan only: 49 euros.", "title": "Plans v2"},
        )
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["title"] == "Plans v2" and replaced.json()["chunks"] == 1
        assert await chunk_count(db_url) == 1
        search = await client.post("/v1/kb/search", json={"query": "Cargo plan children"})
        assert all("Cargo" not in c["content"] for c in search.json()["chunks"])

        deleted = await client.delete(f"{docs(company)}/{doc['id']}")
        assert deleted.status_code == 204
        assert (await client.get(f"{docs(company)}/{doc['id']}")).status_code == 404
        assert (await client.delete(f"{docs(company)}/{doc['id']}")).status_code == 404
        assert await chunk_count(db_url) == 0


async def test_a_raw_markdown_body_is_accepted_with_the_title_in_the_query(kb_env, company):
    """`curl --data-binary @file.md -H 'Content-Type: text/markdown'` works without JSON."""
    async with kb_client(kb_env) as client:
        response = await client.post(
            docs(company),
            params={"title": "Pricing", "source": "pricing.md"},
            content=PRICING.encode(),
            headers={"Content-Type": "text/markdown; charset=utf-8"},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["title"], body["source"], body["chunks"]) == ("Pricing", "pricing.md", 2)
        html = await client.post(
            docs(company), content=PAGE.encode(), headers={"Content-Type": "text/html"}
        )
        assert html.status_code == 201, html.text
        assert html.json()["title"] == "Velora returns" and html.json()["format"] == "html"


async def test_a_url_is_fetched_once_and_converted(kb_env, company, website, db_url):
    """A URL is fetched (following redirects), HTML is turned into text under its headings, and
    the document remembers where it came from."""
    async with kb_client(kb_env) as client:
        response = await client.post(docs(company), json={"url": f"{website}/old-returns"})
        assert response.status_code == 201, response.text
        doc = response.json()
        assert doc["title"] == "Velora returns" and doc["format"] == "html"
        assert doc["source"] == f"{website}/returns.html"
        assert doc["metadata"]["fetched_url"] == f"{website}/returns.html"
        assert doc["metadata"]["content_type"] == "text/html"
        content = (await client.get(f"{docs(company)}/{doc['id']}")).json()["content"]
        assert "14-day trial" in content and "track()" not in content and "Shop" not in content
        search = await client.post("/v1/kb/search", json={"query": "collect bike pick-up"})
        assert search.json()["chunks"][0]["heading"] == "Returns > Pick-up"
        md = await client.post(docs(company), json={"url": f"{website}/pricing.md"})
        assert md.status_code == 201 and md.json()["format"] == "markdown"


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/brochure.pdf", 415, "application/pdf"),
        ("/missing", 422, "HTTP 404"),
        ("/huge.txt", 413, "larger than the limit"),
    ],
    ids=["not-text", "not-found", "too-large"],
)
async def test_urls_that_cannot_become_documents_get_4xx_with_reasons(
    kb_env, company, website, db_url, path, status, reason
):
    """A URL that is not text, not there, or too large is refused with a reason; nothing is
    stored."""
    async with kb_client(kb_env, KB_MAX_DOCUMENT_BYTES="65536") as client:
        response = await client.post(docs(company), json={"url": f"{website}{path}"})
        assert response.status_code == status, response.text
        assert reason in response.json()["detail"]
    assert await chunk_count(db_url) == 0


async def test_urls_on_private_addresses_are_refused_unless_allowed(kb_env, company, website):
    """By default ingest will not fetch from loopback or private addresses (they may be
    internal services)."""
    async with kb_client(kb_env, KB_FETCH_ALLOW_PRIVATE="false") as client:
        response = await client.post(docs(company), json={"url": f"{website}/returns.html"})
        assert response.status_code == 422
        assert "KB_FETCH_ALLOW_PRIVATE" in response.json()["detail"]
        scheme = await client.post(docs(company), json={"url": "ftp://example.com/file.txt"})
        assert scheme.status_code == 422


BAD: list[tuple[Any, int, str]] = [
    ({"content": "x", "url": "http://example.com"}, 422, "exactly one"),
    ({"title": "nothing"}, 422, "exactly one"),
    ({"content": ""}, 422, "content"),
    ({"content": "x", "format": "pdf"}, 422, "format"),
    ({"content": "x", "colour": "blue"}, 422, "colour"),
    ({"content": "   \n  "}, 422, "content"),
    ({"content": "<script>only()</script>", "format": "html"}, 422, "after HTML conversion"),
    ({"url": "not a url"}, 422, "url"),
]


@pytest.mark.parametrize(("body", "status", "reason"), BAD)
async def test_invalid_documents_get_4xx_with_reasons(
    kb_env, company, db_url, body, status, reason
):
    """Invalid document bodies are refused with a reason and store nothing."""
    async with kb_client(kb_env) as client:
        response = await client.post(docs(company), json=body)
        assert response.status_code == status, response.text
        assert reason.lower() in response.text.lower()
    assert await chunk_count(db_url) == 0


async def test_requests_outside_the_rules_are_refused(kb_env, company, db_url):
    """Unknown documents give 404, malformed ids and queries 422, other media types 415,
    oversize documents 413, missing or unknown credentials 401, and the operator token or an
    ingest key 403; another company's document is not found."""
    async with kb_client(kb_env, KB_MAX_DOCUMENT_BYTES="2048") as client:
        assert (await client.get(f"{docs(company)}/{uuid.uuid4()}")).status_code == 404
        theirs = await client.post(docs(company), json={"content": "ours"})
        other = await asyncpg.connect(db_url)
        try:
            elsewhere = await other.fetchval(
                "INSERT INTO companies (name) VALUES ('B') RETURNING id"
            )
        finally:
            await other.close()
        stranger = bearer(await make_key(db_url, elsewhere))
        peek = await client.get(f"{docs(company)}/{theirs.json()['id']}", headers=stranger)
        assert peek.status_code == 404
        assert (await client.get("/v1/kb/documents/not-a-uuid")).status_code == 422
        missing = await client.put(f"{docs(company)}/{uuid.uuid4()}", json={"content": "x"})
        assert missing.status_code == 404
        search = "/v1/kb/search"
        assert (await client.post(search, json={"query": "x", "k": 0})).status_code == 422
        assert (await client.post(search, json={"query": ""})).status_code == 422
        pdf = await client.post(
            docs(company), content=b"%PDF", headers={"Content-Type": "application/pdf"}
        )
        assert pdf.status_code == 415 and "text/markdown" in pdf.json()["detail"]
        big = await client.post(docs(company), json={"content": "word " * 1000})
        assert big.status_code == 413 and "limit is 2048" in big.json()["detail"]
        no_token = await client.get(docs(company), headers={"Authorization": ""})
        assert no_token.status_code == 401
        wrong = await client.get(docs(company), headers={"Authorization": "Bearer nope" * 3})
        assert wrong.status_code == 401
        operator = bearer(kb_env["ADMIN_TOKEN"])
        assert (await client.get(docs(company), headers=operator)).status_code == 403
        ingest_only = bearer(await make_key(db_url, company, "ingest"))
        assert (await client.get(docs(company), headers=ingest_only)).status_code == 403


async def test_documents_larger_than_a_message_fit_under_their_own_limit(kb_env, company):
    """A document above the body limit of /inbound-message (64 KiB) is accepted on the KB
    routes, which have their own limit and deadline."""
    section = "\n\n".join(f"Paragraph {i} explains a policy in some detail." for i in range(40))
    text = "\n\n".join(f"## Section {n}\n\n{section}" for n in range(50))
    assert len(text.encode()) > 65_536
    async with kb_client(kb_env) as client:
        response = await client.post(docs(company), json={"content": text, "title": "Handbook"})
        assert response.status_code == 201, response.text
        assert response.json()["chunks"] >= 50
        assert response.json()["embedded_chunks"] == response.json()["chunks"]


async def test_without_an_embedder_documents_are_keyword_searchable_and_say_so(kb_env, company):
    """With EMBEDDINGS_PROVIDER=none documents are stored without vectors, and both the upload
    and the search say that only keyword search applies."""
    async with kb_client(kb_env, EMBEDDINGS_PROVIDER="none") as client:
        added = await client.post(docs(company), json={"content": PRICING})
        assert added.status_code == 201
        assert added.json()["embedded_chunks"] == 0 and "without vectors" in added.json()["note"]
        result = (await client.post("/v1/kb/search", json={"query": "cargo"})).json()
        assert result["mode"] == "keyword" and "no embedder" in result["note"]
        assert result["chunks"][0]["vector_similarity"] is None


@pytest.mark.parametrize(
    ("fault", "status", "reason"),
    [(Fault(500, "boom"), 503, "retry later"), (Fault(401, "bad key"), 502, "401")],
    ids=["api-down", "api-refuses"],
)
async def test_embedding_failures_store_nothing_and_say_whether_to_retry(
    kb_env, company, db_url, fake_openai, fault, status, reason
):
    """When the embeddings API fails the upload stores nothing: 503 with Retry-After when the
    failure may pass, 502 when the API refused."""
    fake_openai.script_embeddings(fault)
    async with kb_client(kb_env) as client:
        response = await client.post(docs(company), json={"content": PRICING})
        assert response.status_code == status, response.text
        assert reason in response.json()["detail"]
        if status == 503:
            assert response.headers["retry-after"] == "5"
        assert (await client.get(docs(company))).json()["total"] == 0
    assert await chunk_count(db_url) == 0
