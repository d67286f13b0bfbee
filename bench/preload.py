"""Data for the cost-growth rows, made inside PostgreSQL (`INSERT ... SELECT generate_series`, the
server-side twin of COPY: no row crosses the wire): job rows for `/queue/stats`, knowledge-base
chunks for search, and the `--big` database of leads and messages."""

from __future__ import annotations

import asyncpg

BENCH_COMPANY = "00000000-0000-4000-8000-00000000b00c"


async def company(conn: asyncpg.Connection, company_id: str = BENCH_COMPANY) -> str:
    await conn.execute(
        "INSERT INTO companies (id, name) VALUES ($1::uuid, 'Bench') ON CONFLICT (id) DO NOTHING",
        company_id,
    )
    return company_id


async def job_rows(db_url: str, count: int, chunk: int = 1_000_000) -> None:
    """`count` finished jobs (mostly completed, some dlq and failed), as a busy install keeps."""
    conn = await asyncpg.connect(db_url)
    try:
        done = 0
        while done < count:
            n = min(chunk, count - done)
            await conn.execute(
                """
                INSERT INTO jobs (id, task_name, task_params, priority, status, attempts,
                                  created_at, updated_at, completed_at, published_at)
                SELECT gen_random_uuid(), 'ai.engage', '{}'::jsonb, 100,
                       CASE WHEN g % 100 = 0 THEN 'dlq' WHEN g % 97 = 0 THEN 'failed'
                            ELSE 'completed' END,
                       1, now() - interval '1 hour', now() - interval '1 hour',
                       now() - interval '1 hour', now() - interval '1 hour'
                FROM generate_series(1, $1) g
                """,
                n,
            )
            done += n
        await conn.execute("ANALYZE jobs")
    finally:
        await conn.close()


async def kb_chunks(db_url: str, count: int, dimensions: int = 384) -> str:
    """`count` chunks with text and random unit vectors in one company, HNSW index rebuilt
    after the load (as `shvya reembed` would leave it). Returns the company id."""
    conn = await asyncpg.connect(db_url)
    try:
        company_id = await company(conn)
        await conn.execute("DROP INDEX IF EXISTS ai_kb_docs_embedding_hnsw")
        doc = await conn.fetchval(
            "INSERT INTO ai_kb_documents (company_id, title, format, content, content_sha256)"
            " VALUES ($1::uuid, 'Bench catalogue', 'text', 'bench', 'bench') RETURNING id",
            company_id,
        )
        words = (
            "solar panel battery inverter warranty install price delivery roof kit cable "
            "monitor grid export tariff finance service repair quote storage charger"
        ).split()
        await conn.execute(
            """
            INSERT INTO ai_kb_docs (company_id, doc_id, title, content, chunk_index, embedding,
                                    embedding_model)
            SELECT $1::uuid, $2, 'Item ' || g,
                   ($4::text[])[1 + g % 20] || ' ' || ($4::text[])[1 + (g / 20) % 20] || ' '
                   || ($4::text[])[1 + (g / 400) % 20] || ' details for item ' || g,
                   g,
                   (SELECT array_agg(random() - 0.5) FROM generate_series(1, $5) d
                     WHERE g > 0)::vector,
                   'bench:random@384'
            FROM generate_series(1, $3) g
            """,
            company_id,
            doc,
            count,
            words,
            dimensions,
        )
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute(
            "CREATE INDEX ai_kb_docs_embedding_hnsw ON ai_kb_docs"
            " USING hnsw (embedding vector_cosine_ops)"
        )
        await conn.execute("ANALYZE ai_kb_docs")
        return company_id
    finally:
        await conn.close()


async def big_database(db_url: str, leads: int, messages: int) -> None:
    """`leads` leads in the default company and `messages` messages among them (half inbound,
    half outbound replies already sent), with their events, as an install a year in would."""
    conn = await asyncpg.connect(db_url)
    try:
        company_id = await conn.fetchval("SELECT id FROM companies ORDER BY created_at LIMIT 1")
        step = 250_000
        for start in range(0, leads, step):
            await conn.execute(
                """
                INSERT INTO leads (company_id, phone_e164, contact_name, created_at, updated_at,
                                   last_inbound_at)
                SELECT $1, '+1777' || lpad(g::text, 7, '0'), 'Lead ' || g,
                       now() - interval '200 days', now() - interval '200 days',
                       now() - interval '100 days'
                FROM generate_series($2::int, $3::int) g
                """,
                company_id,
                start,
                min(start + step, leads) - 1,
            )
        per_lead = max(1, messages // leads)
        step = 1_000_000
        for start in range(0, messages, step):
            await conn.execute(
                """
                WITH l AS (
                    SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM leads
                    WHERE company_id = $1 AND phone_e164 LIKE '+1777%'
                )
                INSERT INTO messages (company_id, lead_id, direction, channel, body, status,
                                      created_at, updated_at, sent_at)
                SELECT $1, l.id,
                       CASE WHEN g % 2 = 0 THEN 'inbound' ELSE 'outbound' END, 'log',
                       'history message ' || g,
                       CASE WHEN g % 2 = 0 THEN 'received' ELSE 'logged' END,
                       now() - make_interval(days => (100 + g % 90)::int),
                       now() - make_interval(days => (100 + g % 90)::int),
                       CASE WHEN g % 2 = 1
                            THEN now() - make_interval(days => (100 + g % 90)::int) END
                FROM generate_series($2::bigint, $3::bigint) g
                JOIN l ON l.n = (g / $4) % $5
                """,
                company_id,
                start,
                min(start + step, messages) - 1,
                per_lead,
                leads,
            )
        # A year-old install has no preload's worth of dirty pages and unset hint bits: without
        # this, the checkpoint of 5,000,000 fresh rows lands in the measured seconds and stalls
        # every commit behind the disk.
        await conn.execute("VACUUM ANALYZE leads")
        await conn.execute("VACUUM ANALYZE messages")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
