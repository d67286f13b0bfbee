"""GDPR erasure through the API (`DELETE /v1/leads/{id}` with the company's admin key) against
real PostgreSQL: the lead's messages, events and contacts go, and so do the bounces of its
email address and its stored files (in the folder, or in S3 with MEDIA_STORE=s3), except a
file another lead's message still uses; the other lead, the suppression of the address and the
anonymised audit trail stay."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shvya_common.settings import CommonSettings
from shvya_common.storage import MediaNotFound, MediaStore, media_store
from tests.integration.test_tenants import api, bearer, inbound, new_company

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def media_env(request: pytest.FixtureRequest, tmp_path) -> dict[str, str]:
    """The settings of one media store: the MEDIA_DIR folder, or a fresh S3 bucket."""
    if request.param == "local":
        return {"MEDIA_DIR": str(tmp_path / "media")}
    env: dict[str, str] = request.getfixturevalue("s3_bucket").env()
    return env


@pytest.fixture
async def store(media_env: dict[str, str]) -> AsyncIterator[MediaStore]:
    store = media_store(CommonSettings(**{k.lower(): v for k, v in media_env.items()}))
    yield store
    await store.aclose()


async def test_erasing_a_lead_removes_its_data_bounces_and_files(
    base_env, admin_token, db_url, media_env, store
):
    """Erasure deletes the lead's own file from the store after COMMIT and keeps the one
    another lead's message still uses."""
    async with api(base_env, **media_env) as client:
        acme = await new_company(client, admin_token, "Acme")
        h = bearer(acme["admin"])
        filed = [
            (await client.post("/inbound-message", json=inbound(phone), headers=h)).json()
            for phone in ("+15550101", "+15550102")
        ]
        conn = await asyncpg.connect(db_url)
        try:
            company = uuid.UUID(acme["id"])
            (gone_msg, gone), (kept_msg, kept) = [
                (
                    uuid.UUID(f["message_id"]),
                    await conn.fetchval(
                        "SELECT lead_id FROM messages WHERE id = $1", uuid.UUID(f["message_id"])
                    ),
                )
                for f in filed
            ]
            own = await store.put(company, b"the erased lead's passport scan", "image/jpeg")
            shared = await store.put(company, b"a brochure both leads sent", "application/pdf")
            await conn.execute(
                "UPDATE messages SET meta = meta || jsonb_build_object('attachments',"
                " jsonb_build_array(jsonb_build_object('key', $2::text),"
                "                   jsonb_build_object('key', $3::text))) WHERE id = $1",
                gone_msg,
                own.key,
                shared.key,
            )
            await conn.execute(
                "INSERT INTO inbound_media (company_id, message_id, channel, media_id, kind,"
                " status, storage_key) VALUES ($1, $2, 'whatsapp_cloud', 'm1', 'document',"
                " 'stored', $3)",
                company,
                kept_msg,
                shared.key,
            )
            await conn.execute("UPDATE leads SET email = 'Ana@Example.org' WHERE id = $1", gone)
            await conn.execute(
                "INSERT INTO email_bounces (company_id, lead_id, address, kind, dsn_message_id)"
                " VALUES ($1, NULL, 'ana@example.org', 'hard', 'dsn-1'),"
                "        ($1, $2, 'ana@example.org', 'hard', 'dsn-2'),"
                "        ($1, $3, 'bo@example.org', 'hard', 'dsn-3')",
                company,
                gone,
                kept,
            )
            await conn.execute(
                "INSERT INTO suppressions (company_id, channel, address, scope, reason)"
                " VALUES ($1, 'email', 'ana@example.org', 'all', 'bounced')",
                company,
            )
            erased = await client.delete(f"/v1/leads/{gone}", headers=h)
            assert erased.status_code == 200, erased.text
            assert erased.json()["messages"] >= 1
            assert await conn.fetchval("SELECT count(*) FROM leads WHERE id = $1", gone) == 0
            assert (
                await conn.fetchval("SELECT count(*) FROM messages WHERE lead_id = $1", gone) == 0
            )
            assert (
                await conn.fetchval("SELECT count(*) FROM events_all WHERE lead_id = $1", gone) == 0
            )
            bounces = await conn.fetch("SELECT address FROM email_bounces")
            assert [b["address"] for b in bounces] == ["bo@example.org"]
            assert await conn.fetchval("SELECT count(*) FROM suppressions") == 1
            assert await conn.fetchval("SELECT count(*) FROM leads WHERE id = $1", kept) == 1
            trail = await conn.fetchval(
                "SELECT payload::text FROM events WHERE type = 'lead.erased'"
            )
            assert str(gone) in trail and "+15550101" not in trail
        finally:
            await conn.close()
    with pytest.raises(MediaNotFound):
        await store.get(own.key)
    assert await store.get(shared.key) == b"a brochure both leads sent"
    again = None
    async with api(base_env, **media_env) as client:
        again = await client.delete(f"/v1/leads/{gone}", headers=bearer(acme["admin"]))
    assert again.status_code == 404
