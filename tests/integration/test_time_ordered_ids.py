"""The hot tables' ids sort by creation time (UUIDv7), made alike by the services (ids.new_id)
and by the database (migration 0020's shvya_uuid7()), so inserts share the rightmost leaves of
the primary keys instead of random ones."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from shvya_common.ids import new_id


def millis(value: uuid.UUID) -> int:
    return value.int >> 80


def test_new_ids_are_version_7_with_the_current_millisecond():
    before = time.time_ns() // 1_000_000
    made = new_id()
    after = time.time_ns() // 1_000_000
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert before <= millis(made) <= after
    assert len({new_id() for _ in range(10_000)}) == 10_000


async def test_the_database_and_the_services_make_ids_in_one_order(db_url: str):
    conn = await asyncpg.connect(db_url)
    try:
        company = await conn.fetchval("INSERT INTO companies (name) VALUES ('Ids') RETURNING id")
        ids = []
        for _ in range(3):
            ids.append(new_id())
            await asyncio.sleep(0.002)  # the next id is at least a millisecond later
            lead = await conn.fetchval(
                "INSERT INTO leads (company_id, phone_e164) VALUES ($1, $2) RETURNING id",
                company,
                f"+1555010{len(ids):04d}",
            )
            ids.append(lead)
            await asyncio.sleep(0.002)
        message = await conn.fetchval(
            "INSERT INTO messages (company_id, lead_id, direction, channel, body, status)"
            " VALUES ($1, $2, 'inbound', 'log', 'hi', 'received') RETURNING id",
            company,
            lead,
        )
        event = await conn.fetchval(
            "INSERT INTO events (company_id, lead_id, type) VALUES ($1, $2, 'lead.created')"
            " RETURNING id",
            company,
            lead,
        )
    finally:
        await conn.close()
    assert all(i.version == 7 for i in [*ids, message, event])
    assert ids == sorted(ids)
    assert sorted(ids, key=millis) == ids and len({millis(i) for i in ids}) == len(ids)
    assert millis(ids[-1]) <= millis(message) <= millis(event)
