"""Ingest's HTTP edge in-process against real NATS and PostgreSQL: bad input, auth, outages."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest

from shvya_common.db import migrate
from shvya_common.embedded import EmbeddedNats, free_port
from shvya_ingest.app import create_app
from shvya_ingest.settings import IngestSettings
from tests.keys import bearer, make_key
from tests.support import eventually

pytestmark = pytest.mark.integration

GOOD = {
    "phone_number": "+1 (202) 555-0123",
    "contact_name": "Lee",
    "message_text": "Hi",
    "channel": "whatsapp_cloud",
}


@asynccontextmanager
async def ingest_client(env: dict[str, str], **overrides: str):
    values = {k.lower(): v for k, v in {**env, **overrides}.items()}
    app = create_app(IngestSettings(**values))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield client


async def counts(db_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM messages) AS messages,"
            " (SELECT count(*) FROM jobs) AS jobs, (SELECT count(*) FROM leads) AS leads,"
            " (SELECT count(*) FROM events) AS events"
        )
        return dict(row)
    finally:
        await conn.close()


@pytest.fixture(params=["fast path", "FastAPI route"])
async def client(request, base_env):
    """Every test here runs twice: through the pure-ASGI fast path and through the route."""
    fast = "true" if request.param == "fast path" else "false"
    async with ingest_client(base_env, FAST_PATH=fast) as c:
        yield c


NOTHING = {"messages": 0, "jobs": 0, "leads": 0, "events": 0}


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b'{"phone_number": "+12025550123", ', 422, "JSON"),
        (json.dumps({**GOOD, "message_text": ""}).encode(), 422, "message_text"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "channel"}).encode(), 422, "channel"),
        (json.dumps({**GOOD, "channel": "telegram"}).encode(), 422, "channel"),
        (json.dumps({**GOOD, "phone_number": "call me maybe"}).encode(), 422, "phone"),
        (json.dumps({**GOOD, "phone_number": "12"}).encode(), 422, "phone"),
        (json.dumps({**GOOD, "company_id": "not-a-uuid"}).encode(), 422, "company_id"),
        (json.dumps({**GOOD, "message_text": "x" * 70_000}).encode(), 413, "larger than"),
        (json.dumps([GOOD]).encode(), 422, ""),
    ],
    ids=[
        "malformed-json",
        "empty-text",
        "missing-channel",
        "unknown-channel",
        "not-a-phone",
        "short-phone",
        "bad-company-id",
        "too-large",
        "not-an-object",
    ],
)
async def test_bad_input_gets_4xx_with_reason_and_writes_nothing(
    client, db_url, raw, status, reason
):
    """Malformed or invalid requests are refused with a reason and leave no record."""
    response = await client.post(
        "/inbound-message", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert reason.lower() in response.text.lower()
    after = await counts(db_url)
    assert after == NOTHING


async def test_a_company_id_without_its_key_is_refused_and_writes_nothing(client, db_url):
    """Without a credential a request may only file into the default company: naming any
    company_id answers 401, and a key of one company naming another answers 403."""
    other = "00000000-0000-4000-8000-000000000000"
    response = await client.post("/inbound-message", json={**GOOD, "company_id": other})
    assert response.status_code == 401
    assert "needs that company's ingest or admin key" in response.json()["detail"]
    conn = await asyncpg.connect(db_url)
    try:
        mine = await conn.fetchval("INSERT INTO companies (name) VALUES ('Mine') RETURNING id")
    finally:
        await conn.close()
    key = await make_key(db_url, mine, "ingest")
    response = await client.post(
        "/inbound-message", json={**GOOD, "company_id": other}, headers=bearer(key)
    )
    assert response.status_code == 403
    after = await counts(db_url)
    assert after["messages"] == after["jobs"] == after["leads"] == 0


async def test_concurrent_requests_of_two_companies_and_channels_are_each_filed_once(
    client, db_url
):
    """Requests that arrive together are filed in one batch, a transaction per company and
    channel run at once: each answer names its own message, filed in its key's company, and a
    number writing on two channels of one company is one lead."""
    conn = await asyncpg.connect(db_url)
    try:
        companies = [
            await conn.fetchval("INSERT INTO companies (name) VALUES ($1) RETURNING id", name)
            for name in ("North", "South")
        ]
    finally:
        await conn.close()
    keys = {c: await make_key(db_url, c, "ingest") for c in companies}
    sent = [
        (company, channel, f"+1202555{n:04d}", f"{company} {channel} {n}")
        for company in companies
        for channel in ("whatsapp_cloud", "log")
        for n in range(10)
    ]
    answers = await asyncio.gather(
        *(
            client.post(
                "/inbound-message",
                json={
                    **GOOD,
                    "company_id": str(c),
                    "channel": ch,
                    "phone_number": p,
                    "message_text": t,
                },
                headers=bearer(keys[c]),
            )
            for c, ch, p, t in sent
        )
    )
    assert [a.status_code for a in answers] == [200] * len(sent)
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT m.id, m.company_id, m.channel, m.body, l.phone_e164, j.id AS job_id"
            " FROM messages m JOIN leads l ON l.id = m.lead_id"
            " JOIN jobs j ON j.idempotency_key = 'ai.engage:' || m.id"
        )
        leads = await conn.fetchval("SELECT count(*) FROM leads")
    finally:
        await conn.close()
    by_id = {str(r["id"]): r for r in rows}
    assert len(rows) == len(sent)
    for (company, channel, phone, text), answer in zip(sent, answers, strict=True):
        row = by_id[answer.json()["message_id"]]
        assert (row["company_id"], row["channel"], row["phone_e164"], row["body"]) == (
            company,
            channel,
            phone,
            text,
        )
        assert str(row["job_id"]) == answer.json()["job_id"]
    assert leads == 20


async def test_lead_is_upserted_by_normalised_phone_and_name_updated(client, db_url):
    """Two spellings of one number reach the same lead, whose name follows the latest message."""
    first = await client.post("/inbound-message", json=GOOD)
    second = await client.post(
        "/inbound-message", json={**GOOD, "phone_number": "+12025550123", "contact_name": "Lee K"}
    )
    assert first.status_code == second.status_code == 200
    conn = await asyncpg.connect(db_url)
    try:
        leads = await conn.fetch("SELECT phone_e164, contact_name FROM leads")
        assert [dict(r) for r in leads] == [{"phone_e164": "+12025550123", "contact_name": "Lee K"}]
        assert await conn.fetchval("SELECT count(*) FROM messages") == 2
        jobs = await conn.fetch("SELECT task_name, priority, status FROM jobs")
        assert {(j["task_name"], j["priority"]) for j in jobs} == {("ai.engage", 100)}
    finally:
        await conn.close()


async def test_admin_replay_needs_the_bearer_token(client, admin_token):
    """/admin/* answers 401 without a token or with an unknown one, 403 with a company's key,
    200 with the operator's token."""
    assert (await client.post("/admin/dlq/replay", json={"max_jobs": 5})).status_code == 401
    wrong = await client.post(
        "/admin/dlq/replay", json={"max_jobs": 5}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    right = await client.post(
        "/admin/dlq/replay",
        json={"max_jobs": 5},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert right.status_code == 200
    assert right.json() == {"replayed": 0, "job_ids": [], "jobs": 0, "sends": 0, "dry_run": False}
    bad = await client.post(
        "/admin/dlq/replay",
        json={"max_jobs": 0},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert bad.status_code == 422


async def test_health_readiness_and_metrics(client):
    """/healthz and /readyz answer on the public port; metrics are not served there (they have
    their own port, METRICS_HOST:METRICS_PORT) but record the request."""
    from prometheus_client import generate_latest

    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    await client.post("/inbound-message", json=GOOD)
    assert (await client.get("/metrics")).status_code == 404
    metrics = generate_latest().decode()
    assert 'shvya_http_request_seconds_count{method="POST",route="/inbound-message"' in metrics
    assert "shvya_jobs_enqueued_total" in metrics


async def test_nats_outage_still_accepts_and_the_relay_publishes_later(base_env, db_url, tmp_path):
    """With NATS down, /inbound-message answers 200 with the message and its job committed but
    unpublished; once NATS is back, the relay publishes the job (readiness follows PostgreSQL)."""
    from shvya_common.bus.relay import Relay, RelayConfig

    store = tmp_path / "nats"
    port, monitor = free_port(), free_port()
    nats_server = EmbeddedNats(store, port, monitor)
    nats_server.start()
    try:
        async with ingest_client(base_env, NATS_URL=nats_server.url) as client:
            assert (await client.post("/inbound-message", json=GOOD)).status_code == 200
            nats_server.stop()
            response = await client.post(
                "/inbound-message", json={**GOOD, "phone_number": "+12025550199"}
            )
            assert response.status_code == 200, response.text
            job_id = response.json()["job_id"]
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["nats"] != "ok"
            conn = await asyncpg.connect(db_url)
            try:
                unpublished = "SELECT published_at IS NULL FROM jobs WHERE id = $1::uuid"
                assert await conn.fetchval(unpublished, job_id) is True
                nats_server = EmbeddedNats(store, port, monitor)
                nats_server.start()
                ingest = client._transport.app.state.ingest  # type: ignore[attr-defined]
                relay = Relay(ingest.plat.bus, RelayConfig(grace=0))
                await eventually(relay.relay_once, lambda n: n >= 1, timeout=30)
                assert await conn.fetchval(unpublished, job_id) is False
            finally:
                await conn.close()
            info = await ingest.plat.js.stream_info(ingest.plat.topology.jobs_stream)
            assert info.state.messages == 2
    finally:
        nats_server.stop()
    after = await counts(db_url)
    assert after["messages"] == 2 and after["jobs"] == 2


async def test_database_outage_gets_503(base_env, db_url, pg_admin_url):
    """With the database unreachable, /inbound-message answers 503 instead of 500 or hanging."""
    async with ingest_client(base_env, REQUEST_TIMEOUT_SECONDS="5") as client:
        assert (await client.post("/inbound-message", json=GOOD)).status_code == 200
        name = db_url.rsplit("/", 1)[1]
        admin = await asyncpg.connect(pg_admin_url)
        try:
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            response = await client.post(
                "/inbound-message", json={**GOOD, "phone_number": "+12025550199"}
            )
            assert response.status_code == 503, response.text
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            await admin.close()


async def test_migrations_are_safe_when_services_start_at_once(pg_admin_url):
    """Eight concurrent migrators on an empty database apply each migration exactly once."""
    name = f"m_{free_port()}"
    admin = await asyncpg.connect(pg_admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        results = await asyncio.gather(*(migrate(url) for _ in range(8)))
        applied = [m for r in results for m in r]
        conn = await asyncpg.connect(url)
        try:
            versions = await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")
        finally:
            await conn.close()
        assert sorted(applied) == [v["name"] for v in versions]
        assert len(applied) == len(set(applied))
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
