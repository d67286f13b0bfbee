"""pgvector's binary codec on pooled connections: vectors written and read back exactly (as
float32), passed to distance operators, and a pool on a database without the extension still
opens."""

from __future__ import annotations

import math
import uuid

import asyncpg
import pytest
from pgvector import Vector

from shvya_common.db import create_pool
from shvya_common.knowledge.repository import as_vector

pytestmark = pytest.mark.integration


async def test_vectors_round_trip_in_binary(db_url):
    """A list, a tuple and a Vector go in; the same float32 values come out as a Vector."""
    pool = await create_pool(db_url, 1, 2)
    try:
        values = [0.1, -2.5, 3.0e-3, 1.0] + [0.0] * 380
        company = await pool.fetchval("INSERT INTO companies (name) VALUES ('V') RETURNING id")
        doc = await pool.fetchval(
            "INSERT INTO ai_kb_documents (company_id, title, format, content, content_sha256)"
            " VALUES ($1, 't', 'text', 'c', 'h') RETURNING id",
            company,
        )
        ids = []
        for given in (values, tuple(values), Vector(values)):
            ids.append(
                await pool.fetchval(
                    "INSERT INTO ai_kb_docs (company_id, doc_id, title, content, embedding)"
                    " VALUES ($1, $2, 't', 'c', $3) RETURNING id",
                    company,
                    doc,
                    as_vector(given),
                )
            )
        for chunk_id in ids:
            back = await pool.fetchval("SELECT embedding FROM ai_kb_docs WHERE id = $1", chunk_id)
            assert isinstance(back, Vector)
            assert back.to_list() == pytest.approx(values, rel=1e-6)
        # The same parameter type serves the distance operator.
        distance = await pool.fetchval(
            "SELECT embedding <=> $1 FROM ai_kb_docs WHERE id = $2", as_vector(values), ids[0]
        )
        assert math.isclose(distance, 0.0, abs_tol=1e-6)
        # The text form (what the codec replaced) names the same vector.
        text = await pool.fetchval("SELECT embedding::text FROM ai_kb_docs WHERE id = $1", ids[0])
        assert text.startswith("[0.1,-2.5,0.003,1")
    finally:
        await pool.close()


async def test_a_pool_opens_where_the_extension_is_missing(pg_admin_url):
    """A database without pgvector gets no vector codec, and no error."""
    name = f"novec_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
        pool = await create_pool(url, 1, 1)
        try:
            assert await pool.fetchval("SELECT 1") == 1
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
