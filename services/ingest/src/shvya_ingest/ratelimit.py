"""Request rate limits shared by every ingest replica: `limits` for the strategy and notation
("1200/minute"), PostgreSQL as the store, so two replicas count the same key together.

`limits` ships stores for Redis, Memcached, MongoDB and memory; SHVYA's only shared state is
PostgreSQL, so `PostgresStorage` implements `limits.aio.storage.Storage` over the
`rate_counters` table (one upsert per hit, or one for several keys at once with `hit_many`,
which the inbound path uses to count the key and the sender together). A limit over its amount
answers 429 with `Retry-After` (the seconds until the window resets).

Concurrent requests' hits are coalesced (`shvya_common.bus.batching.Coalescer`): one upsert
for all the hits made while the previous one ran, each key counted once with the sum of its
hits. Each request is then given the count it would have seen had the hits been made one after
another in arrival order, so the limit is exactly as strict as one statement per hit, while a
burst from one key no longer queues on that key's row lock request by request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg
from limits import RateLimitItem, parse
from limits.aio.storage import Storage

from shvya_common.bus.batching import Coalescer

Hits = list[tuple[str, int, float]]

_INCR = """
INSERT INTO rate_counters AS c (key, value, expires_at)
SELECT k, a, now() + make_interval(secs => e)
FROM unnest($1::text[], $2::int[], $3::float8[]) AS u(k, a, e)
ON CONFLICT (key) DO UPDATE
   SET value = CASE WHEN c.expires_at <= now() THEN EXCLUDED.value
                    ELSE c.value + EXCLUDED.value END,
       expires_at = CASE WHEN c.expires_at <= now() THEN EXCLUDED.expires_at ELSE c.expires_at END
RETURNING key, value, extract(epoch FROM c.expires_at) AS expires
"""


class PostgresStorage(Storage):
    """`limits` storage over the `rate_counters` table (fixed windows)."""

    STORAGE_SCHEME = ["shvya+postgresql"]  # noqa: RUF012  (the base class declares it so)

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__()
        self.pool = pool
        self._batches: Coalescer[None, Hits, dict[str, tuple[int, float]]] = Coalescer(
            self._incr_batch, max_batch=512
        )

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)

    async def incr_many(self, hits: Hits) -> dict[str, tuple[int, float]]:
        """Add `amount` to each (key, amount, expiry); returns key → (count, expires at)."""
        return await self._batches.submit(None, hits)

    async def _incr_batch(self, _: None, calls: list[Hits]) -> list[dict[str, tuple[int, float]]]:
        merged: dict[str, list[float]] = {}
        for hits in calls:
            for key, amount, expiry in hits:
                entry = merged.setdefault(key, [0, float(expiry)])
                entry[0] += amount
        rows = await self.pool.fetch(
            _INCR,
            list(merged),
            [int(v[0]) for v in merged.values()],
            [v[1] for v in merged.values()],
        )
        totals = {r["key"]: (int(r["value"]), float(r["expires"])) for r in rows}
        # Hand out the counts in arrival order: the first call sees the count before the
        # others' hits, as if each had been its own statement.
        seen = {key: totals[key][0] - int(v[0]) for key, v in merged.items()}
        out = []
        for hits in calls:
            mine: dict[str, tuple[int, float]] = {}
            for key, amount, _expiry in hits:
                seen[key] += amount
                mine[key] = (seen[key], totals[key][1])
            out.append(mine)
        return out

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return (await self.incr_many([(key, amount, expiry)]))[key][0]

    async def get(self, key: str) -> int:
        value = await self.pool.fetchval(
            "SELECT value FROM rate_counters WHERE key = $1 AND expires_at > now()", key
        )
        return int(value or 0)

    async def get_expiry(self, key: str) -> float:
        value = await self.pool.fetchval(
            "SELECT extract(epoch FROM expires_at) FROM rate_counters WHERE key = $1", key
        )
        return float(value) if value is not None else time.time()

    async def check(self) -> bool:
        try:
            await self.pool.fetchval("SELECT 1")
        except self.base_exceptions:
            return False
        return True

    async def reset(self) -> int | None:
        status = await self.pool.execute("DELETE FROM rate_counters")
        return int(status.rsplit(" ", 1)[1])

    async def clear(self, key: str) -> None:
        await self.pool.execute("DELETE FROM rate_counters WHERE key = $1", key)

    async def sweep(self) -> None:
        """Drop counters whose window ended (kept small; called now and then)."""
        await self.pool.execute("DELETE FROM rate_counters WHERE expires_at <= now()")


@dataclass(frozen=True)
class Limited(Exception):
    """Over a limit: retry after `retry_after` seconds."""

    what: str
    retry_after: int

    def __str__(self) -> str:
        return f"rate limit reached for {self.what}; retry after {self.retry_after} s"


class RateLimiter:
    """Named limits, counted together in one statement per request."""

    def __init__(self, storage: PostgresStorage, **limits: str) -> None:
        self.storage = storage
        self.items: dict[str, RateLimitItem] = {name: parse(text) for name, text in limits.items()}

    async def hit(self, **identities: str) -> None:
        """Count one hit for each named limit's identity; raises Limited when one is over."""
        pairs = [(name, self.items[name], ident) for name, ident in identities.items()]
        keys = [(item.key_for(name, ident), name, item) for name, item, ident in pairs]
        counts = await self.storage.incr_many([(k, 1, item.get_expiry()) for k, _, item in keys])
        for key, name, item in keys:
            value, expires = counts[key]
            if value > item.amount:
                raise Limited(name, max(1, int(expires - time.time() + 0.999)))
