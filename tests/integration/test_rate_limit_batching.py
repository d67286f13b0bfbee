"""Ingest's rate limits with concurrent hits coalesced into one upsert: exactly as strict as one
statement per hit."""

from __future__ import annotations

import asyncio

import pytest

from shvya_common.db import create_pool
from shvya_ingest.ratelimit import Limited, PostgresStorage, RateLimiter

pytestmark = pytest.mark.integration


async def test_concurrent_hits_are_counted_in_order(db_url):
    """Twenty requests at once against five a minute: five pass and fifteen are limited, and
    the stored count is twenty; another sender is counted apart."""
    pool = await create_pool(db_url, 1, 4)
    try:
        limiter = RateLimiter(PostgresStorage(pool), sender="5/minute")

        async def one(who: str) -> bool:
            try:
                await limiter.hit(sender=who)
            except Limited:
                return False
            return True

        results = await asyncio.gather(*(one("+15550001") for _ in range(20)), one("+15550002"))
        assert sum(results[:20]) == 5
        assert results[20] is True
        stored = await pool.fetchval("SELECT max(value) FROM rate_counters")
        assert stored == 20
    finally:
        await pool.close()
