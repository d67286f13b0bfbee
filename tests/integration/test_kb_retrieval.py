"""Knowledge-base storage and hybrid retrieval against real PostgreSQL with pgvector.

The offline embedder (all-MiniLM-L6-v2 from the `offline-embedder` extra, which `make test`
installs) is measured on the shipped fixture: 12 documents of a fictional company and 30
questions with the document each should find. The OpenAI embedder runs the real `openai` SDK
against a local server that speaks the embeddings wire format.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import openai
import pytest
from aiohttp import web

from shvya_common.db import create_pool
from shvya_common.errors import PermanentError, RetryableError
from shvya_common.knowledge import (
    Embedder,
    KnowledgeBase,
    KnowledgeConfigError,
    LocalEmbedder,
    NewDocument,
    OpenAIEmbedder,
    reembed,
    retrieve,
)
from tests.fakes.openai_server import Delay, Disconnect, FakeOpenAI, Fault

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parent.parent / "fixtures" / "kb"
QUESTIONS = json.loads((FIXTURE / "questions.json").read_text())["questions"]


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_url, 1, 4)
    yield p
    await p.close()


async def new_company(pool: asyncpg.Pool, name: str = "Velora") -> uuid.UUID:
    company_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO companies (name) VALUES ($1) RETURNING id", name
    )
    return company_id


@pytest.fixture
async def company_id(pool: asyncpg.Pool) -> uuid.UUID:
    return await new_company(pool)


@pytest.fixture(scope="session")
def local_embedder() -> LocalEmbedder:
    """One offline model for the whole run; it loads on first use."""
    return LocalEmbedder()


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test", default_dimensions=384) as server:
        yield server


def openai_embedder(
    server: FakeOpenAI,
    *,
    model: str = "text-embedding-3-small",
    dimensions: int = 384,
    timeout: float = 10.0,
) -> OpenAIEmbedder:
    client = openai.AsyncOpenAI(
        api_key="sk-test", base_url=server.base_url, max_retries=0, timeout=timeout
    )
    return OpenAIEmbedder(client, model=model, dimensions=dimensions, owns_client=True)


async def load_fixture(kb: KnowledgeBase, company_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """Store the fixture documents; returns doc_id -> file name."""
    names = {}
    for path in sorted((FIXTURE / "velora").glob("*.md")):
        stored = await kb.add_document(
            company_id, NewDocument(content=path.read_text(), format="markdown", source=path.name)
        )
        names[stored.info.id] = path.name
    return names


async def hit_rate(
    pool: asyncpg.Pool,
    company_id: uuid.UUID,
    names: dict[uuid.UUID, str],
    embedder: Embedder | None,
    label: str,
    capsys: pytest.CaptureFixture[str],
) -> tuple[float, set[str]]:
    """Share of fixture questions whose expected document is in the top 3; prints the misses."""
    hits = 0
    modes = set()
    for item in QUESTIONS:
        found = await retrieve(pool, company_id, item["question"], k=3, embedder=embedder)
        modes.add(found.mode)
        top = [names[chunk.doc_id] for chunk in found.chunks]
        if item["expected"] in top:
            hits += 1
        else:
            print(f"  miss ({label}): {item['question']!r} wanted {item['expected']}, got {top}")
    rate = hits / len(QUESTIONS)
    with capsys.disabled():  # shown in every run, not only when the test fails
        print(
            f"\n{label}: expected document in the top 3 for {hits}/{len(QUESTIONS)}"
            f" questions = {rate:.1%}"
        )
    return rate, modes


@pytest.mark.timeout(900)  # the first use of the offline model imports PyTorch
async def test_offline_embedder_finds_the_expected_document_in_the_top_3_for_90_percent(
    pool, company_id, local_embedder, capsys
):
    """With the offline embedder, hybrid retrieval puts the expected fixture document in the top
    3 for at least 90% of the 30 fixture questions."""
    assert len(QUESTIONS) == 30
    kb = KnowledgeBase(pool, local_embedder)
    names = await load_fixture(kb, company_id)
    assert len(names) == 12
    models = await pool.fetch("SELECT DISTINCT embedding_model FROM ai_kb_docs")
    assert [r["embedding_model"] for r in models] == ["local:all-MiniLM-L6-v2"]
    rate, modes = await hit_rate(
        pool, company_id, names, local_embedder, "hybrid retrieval, offline model", capsys
    )
    assert modes == {"hybrid"}
    assert rate >= 0.9


async def test_keyword_only_retrieval_says_so_and_still_finds_most_documents(
    pool, company_id, capsys
):
    """Without an embedder, chunks are stored without vectors, retrieval runs keyword search
    alone, says so, and still finds the expected document in the top 3 for most questions."""
    kb = KnowledgeBase(pool, None)
    names = await load_fixture(kb, company_id)
    assert await pool.fetchval("SELECT count(*) FROM ai_kb_docs WHERE embedding IS NOT NULL") == 0
    found = await retrieve(pool, company_id, "How do I cancel my subscription?", k=3)
    assert found.mode == "keyword"
    assert found.note is not None and "no embedder" in found.note
    assert found.embedder is None
    assert all(c.vector_similarity is None and c.keyword_rank for c in found.chunks)
    rate, modes = await hit_rate(pool, company_id, names, None, "keyword retrieval", capsys)
    assert modes == {"keyword"}
    assert rate >= 0.8


async def test_openai_embedder_stores_and_searches_through_the_real_sdk(
    pool, company_id, fake_openai
):
    """The OpenAI embedder sends the model and dimensions over the real SDK, its vectors are
    stored with its name, and hybrid retrieval finds a document by its words."""
    embedder = openai_embedder(fake_openai)
    assert isinstance(embedder, Embedder)
    try:
        kb = KnowledgeBase(pool, embedder)
        names = await load_fixture(kb, company_id)
        requests = fake_openai.embedding_requests()
        assert len(requests) == len(names)  # one batch per document
        body = requests[0].body
        assert body["model"] == "text-embedding-3-small" and body["dimensions"] == 384
        assert body["encoding_format"] == "base64"  # the SDK's default, decoded by the SDK
        assert body["input"][0].startswith("Accessories\n")  # title above each chunk
        stored = await pool.fetch(
            "SELECT DISTINCT embedding_model, vector_dims(embedding) AS dims FROM ai_kb_docs"
        )
        assert [dict(r) for r in stored] == [
            {"embedding_model": "openai:text-embedding-3-small@384", "dims": 384}
        ]
        found = await retrieve(
            pool, company_id, "Waterproof panniers and a front basket", k=3, embedder=embedder
        )
        assert found.mode == "hybrid" and found.note is None
        assert found.embedder == "openai:text-embedding-3-small@384"
        assert names[found.chunks[0].doc_id] == "accessories.md"
        assert found.chunks[0].heading == "Accessories > Bags and baskets"
        assert found.chunks[0].vector_similarity is not None
        assert found.chunks[0].keyword_rank is not None
        assert found.chunks[0].score > found.chunks[1].score
        # The query itself was embedded too.
        assert fake_openai.embedding_requests()[-1].body["input"] == [
            "Waterproof panniers and a front basket"
        ]
    finally:
        await embedder.aclose()


@pytest.mark.parametrize(
    ("action", "error", "reason"),
    [
        (Fault(429, "Rate limit reached"), RetryableError, "429"),
        (Fault(500, "The server had an error"), RetryableError, "500"),
        (Fault(503, "Overloaded"), RetryableError, "503"),
        (Delay(5.0), RetryableError, "timed out"),
        (Disconnect(), RetryableError, "unreachable"),
        (Fault(400, "Invalid input"), PermanentError, "400"),
        (Fault(401, "Incorrect API key"), PermanentError, "401"),
        (Fault(403, "Not allowed"), PermanentError, "403"),
        (Fault(404, "The model does not exist"), PermanentError, "404"),
    ],
    ids=["429", "500", "503", "timeout", "disconnect", "400", "401", "403", "404"],
)
async def test_openai_failures_map_to_retryable_or_permanent(fake_openai, action, error, reason):
    """Rate limits, 5xx, timeouts and lost connections are retryable; 400, 401, 403 and 404
    are permanent; the error says what happened."""
    fake_openai.script_embeddings(action)
    embedder = openai_embedder(fake_openai, timeout=0.5)
    try:
        with pytest.raises(error, match=reason) as caught:
            await embedder.embed(["hello"])
        if error is RetryableError:
            assert not isinstance(caught.value, PermanentError)
    finally:
        await embedder.aclose()


async def test_a_server_that_ignores_dimensions_is_refused():
    """Vectors of another size than configured are refused with a message naming
    EMBEDDINGS_DIMENSIONS (a server whose model has a fixed size ignores `dimensions`)."""

    async def fixed_size(request: web.Request) -> web.Response:
        body = await request.json()
        data = [
            {"object": "embedding", "index": i, "embedding": [0.6, 0.8, 0.0]}
            for i, _ in enumerate(body["input"])
        ]
        usage = {"prompt_tokens": 1, "total_tokens": 1}
        return web.json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    app = web.Application()
    app.router.add_post("/v1/embeddings", fixed_size)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    client = openai.AsyncOpenAI(api_key="sk-x", base_url=f"http://127.0.0.1:{port}/v1")
    embedder = OpenAIEmbedder(client, model="nomic-embed-text", dimensions=384, owns_client=True)
    try:
        with pytest.raises(PermanentError, match=r"returned 3 dimensions.*EMBEDDINGS_DIMENSIONS"):
            await embedder.embed(["hello", "world"])
    finally:
        await embedder.aclose()
        await runner.cleanup()


async def test_query_embedding_failure_falls_back_to_keyword_search(pool, company_id, fake_openai):
    """When the embeddings API fails for the question, retrieval still answers by keyword and
    its note says why."""
    embedder = openai_embedder(fake_openai)
    try:
        await load_fixture(KnowledgeBase(pool, embedder), company_id)
        fake_openai.script_embeddings(Fault(503, "Overloaded"))
        found = await retrieve(pool, company_id, "Where can I download my invoices?", 3, embedder)
        assert found.mode == "keyword"
        assert found.note is not None and "embedding the query failed" in found.note
        assert found.chunks and found.chunks[0].title == "Payments and invoices"
    finally:
        await embedder.aclose()


async def test_vectors_of_another_model_are_never_compared_until_reembedded(
    pool, company_id, fake_openai
):
    """After a model change, the old vectors are not used (keyword only, with a note naming
    `shvya reembed`); re-embedding makes every chunk searchable by the new model."""
    old = openai_embedder(fake_openai, model="text-embedding-3-small")
    new = openai_embedder(fake_openai, model="text-embedding-3-large")
    try:
        await load_fixture(KnowledgeBase(pool, old), company_id)
        chunks = await pool.fetchval("SELECT count(*) FROM ai_kb_docs")
        before = await retrieve(pool, company_id, "How far can I ride on one charge?", 3, new)
        assert before.mode == "keyword"
        assert before.note is not None and "shvya reembed" in before.note
        sent = len(fake_openai.embedding_requests())
        assert not any(
            r.body["model"] == "text-embedding-3-large" for r in fake_openai.embedding_requests()
        )
        progress: list[int] = []
        report = await reembed(pool, new, batch_size=16, progress=progress.append)
        assert report.embedded == chunks and report.resized_from is None
        assert progress[-1] == chunks and len(progress) == -(-chunks // 16)
        assert len(fake_openai.embedding_requests()) == sent + len(progress)
        models = await pool.fetch("SELECT DISTINCT embedding_model FROM ai_kb_docs")
        assert [r["embedding_model"] for r in models] == ["openai:text-embedding-3-large@384"]
        after = await retrieve(pool, company_id, "How far can I ride on one charge?", 3, new)
        assert after.mode == "hybrid" and after.note is None
        again = await reembed(pool, new)
        assert again.embedded == 0  # nothing stale: a second run is a no-op
    finally:
        await old.aclose()
        await new.aclose()


async def test_reembed_resizes_the_vector_column_when_the_dimensions_change(
    pool, company_id, fake_openai
):
    """A new vector size is refused for writes and skipped by search until `reembed` resizes
    the column (for all companies) and re-embeds every chunk, keeping the HNSW index."""
    small = openai_embedder(fake_openai, dimensions=384)
    wide = openai_embedder(fake_openai, dimensions=512)
    other = await new_company(pool, "Other")
    try:
        await load_fixture(KnowledgeBase(pool, small), company_id)
        await KnowledgeBase(pool, small).add_document(
            other, NewDocument(content="# Other\nOther company text.")
        )
        with pytest.raises(KnowledgeConfigError, match="shvya reembed"):
            await KnowledgeBase(pool, wide).add_document(company_id, NewDocument(content="x"))
        skipped = await retrieve(pool, company_id, "child seat", 3, wide)
        assert skipped.mode == "keyword" and "512" in (skipped.note or "")
        with pytest.raises(KnowledgeConfigError, match="without --company"):
            await reembed(pool, wide, company_id=company_id)
        report = await reembed(pool, wide)
        assert (report.resized_from, report.dimensions) == (384, 512)
        assert report.embedded == await pool.fetchval("SELECT count(*) FROM ai_kb_docs")
        assert (
            await pool.fetchval(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = 'ai_kb_docs'::regclass AND attname = 'embedding'"
            )
            == "vector(512)"
        )
        index = await pool.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ai_kb_docs_embedding_hnsw'"
        )
        assert "hnsw" in index and "vector_cosine_ops" in index
        found = await retrieve(pool, company_id, "child seat", 3, wide)
        assert found.mode == "hybrid"
        assert found.chunks[0].title == "Accessories"
    finally:
        await small.aclose()
        await wide.aclose()


async def test_replacing_and_deleting_a_document_leave_no_stale_chunks(pool, company_id):
    """A replaced document is searchable only by its new text; a deleted one not at all."""
    kb = KnowledgeBase(pool, None, chunk_chars=200, overlap_chars=20)
    stored = await kb.add_document(
        company_id, NewDocument(content="# Hours\nWe open at zeppelin o'clock.", title="Hours")
    )
    assert stored.note is not None and "without vectors" in stored.note
    assert (await retrieve(pool, company_id, "zeppelin", 5)).chunks
    replaced = await kb.replace_document(
        company_id, stored.info.id, NewDocument(content="# Hours\nWe open at nine sharp.")
    )
    assert replaced is not None and replaced.info.id == stored.info.id
    assert replaced.info.title == "Hours"  # from the new content's heading
    assert not (await retrieve(pool, company_id, "zeppelin", 5)).chunks
    [chunk] = (await retrieve(pool, company_id, "nine sharp", 5)).chunks
    assert chunk.doc_id == stored.info.id and chunk.content == "We open at nine sharp."
    missing = await kb.replace_document(company_id, uuid.uuid4(), NewDocument(content="x"))
    assert missing is None
    assert await kb.delete_document(company_id, stored.info.id)
    assert await pool.fetchval("SELECT count(*) FROM ai_kb_docs") == 0
    assert not await kb.delete_document(company_id, stored.info.id)


async def test_retrieval_never_crosses_companies(pool, company_id):
    """One company's question never returns another company's chunks."""
    other = await new_company(pool, "Other")
    kb = KnowledgeBase(pool, None)
    await kb.add_document(other, NewDocument(content="# Secret\nThe launch code is walrus."))
    await kb.add_document(company_id, NewDocument(content="# Public\nWe sell bikes."))
    assert not (await retrieve(pool, company_id, "walrus launch code", 5)).chunks
    assert (await retrieve(pool, other, "walrus launch code", 5)).chunks


async def test_empty_knowledge_base_and_wordless_questions_explain_themselves(
    pool, company_id, fake_openai
):
    """An empty knowledge base is not embedded against, and a question of stop words only is
    answered by vector search alone; both say so."""
    embedder = openai_embedder(fake_openai)
    try:
        empty = await retrieve(pool, company_id, "What does it cost?", 3, embedder)
        assert empty.chunks == [] and "empty" in (empty.note or "")
        assert fake_openai.embedding_requests() == []  # nothing to compare with: no API call
        await KnowledgeBase(pool, embedder).add_document(
            company_id, NewDocument(content="# Prices\nThe City plan costs 39 euros.")
        )
        wordless = await retrieve(pool, company_id, "what is it about?", 3, embedder)
        assert wordless.mode == "vector" and wordless.chunks
        assert "no searchable words" in (wordless.note or "")
        blank = await retrieve(pool, company_id, "   ", 3, embedder)
        assert blank.chunks == [] and blank.note == "empty query"
    finally:
        await embedder.aclose()


async def test_reembed_command_embeds_documents_loaded_without_an_embedder(
    db_url, pool, company_id, fake_openai
):
    """`shvya reembed` embeds chunks stored while no embedder was configured, and refuses to run
    with no embedder at all."""
    await load_fixture(KnowledgeBase(pool, None), company_id)
    chunks = await pool.fetchval("SELECT count(*) FROM ai_kb_docs")
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "EMBEDDINGS_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "EMBEDDINGS_BATCH_SIZE": "50",
        "LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shvya_common.cli",
        "reembed",
        "--company",
        str(company_id),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, text
    assert f"done: {chunks} chunks embedded with openai:text-embedding-3-small@384" in text
    assert await pool.fetchval("SELECT count(*) FROM ai_kb_docs WHERE embedding IS NULL") == 0
    env["EMBEDDINGS_PROVIDER"] = "none"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shvya_common.cli",
        "reembed",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 2
    assert "no embedder configured" in out.decode()


async def test_migration_keeps_rows_written_before_it(pg_admin_url):
    """Rows in the untyped ai_kb_docs of the core schema become one-chunk documents; vectors of
    384 dimensions are kept (marked as of an unknown model), others are cleared for reembed."""
    from shvya_common.db import migration_files

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(pg_admin_url.rsplit("/", 1)[0] + f"/{name}")
    try:
        files = migration_files()
        for version, _, sql in files:
            if version < 4:
                await conn.execute(sql)
        company = await conn.fetchval("INSERT INTO companies (name) VALUES ('Old') RETURNING id")
        wide = "[" + ",".join(["0.1"] * 384) + "]"
        rows = [("Kept", wide), ("Cleared", "[1,2,3]"), ("Plain", None)]
        ids = {}
        for title, vector in rows:
            ids[title] = await conn.fetchval(
                "INSERT INTO ai_kb_docs (company_id, title, content, embedding)"
                " VALUES ($1, $2, $3, $4::vector) RETURNING id",
                company,
                title,
                f"{title} text about refunds",
                vector,
            )
        [sql] = [sql for version, _, sql in files if version == 4]
        await conn.execute(sql)
        migrated = {
            r["title"]: r
            for r in await conn.fetch(
                "SELECT c.title, c.doc_id, c.id, vector_dims(c.embedding) AS dims,"
                " c.embedding_model, d.content FROM ai_kb_docs c"
                " JOIN ai_kb_documents d ON d.id = c.doc_id"
            )
        }
        assert {t: (r["doc_id"] == r["id"] == ids[t]) for t, r in migrated.items()} == {
            "Kept": True,
            "Cleared": True,
            "Plain": True,
        }
        assert (migrated["Kept"]["dims"], migrated["Kept"]["embedding_model"]) == (384, "unknown")
        assert migrated["Cleared"]["dims"] is None and migrated["Plain"]["dims"] is None
        assert migrated["Plain"]["content"] == "Plain text about refunds"
        hits = await conn.fetchval(
            "SELECT count(*) FROM ai_kb_docs WHERE tsv @@ websearch_to_tsquery('english', 'refund')"
        )
        assert hits == 3
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
