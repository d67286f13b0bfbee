"""Round trips to PostgreSQL per message, counted, not timed: a load-independent measure for a
shared machine. Files `--messages` inbound messages (workers stopped), then runs engage (offline
responder) and dispatch (log channel) in this process until every reply is recorded, counting
every statement asyncpg sends (BEGIN, COMMIT and the pool's reset query included).

    .venv/bin/python bench/roundtrips.py               # this code
    .venv/bin/python bench/roundtrips.py --ref 48a262d # another ref, from an export of its tree

Prints statements per message for engage and dispatch (and the ingest side, for reference).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _count_statements() -> collections.Counter[str]:
    import asyncpg.connection

    counts: collections.Counter[str] = collections.Counter()
    original = asyncpg.connection.Connection._execute
    original_many = asyncpg.connection.Connection._executemany
    original_plain = asyncpg.connection.Connection.execute

    async def counted(self, query, args, limit, timeout, **kw):  # type: ignore[no-untyped-def]
        counts[_phase.get()] += 1
        return await original(self, query, args, limit, timeout, **kw)

    async def counted_many(self, query, args, timeout, **kw):  # type: ignore[no-untyped-def]
        counts[_phase.get()] += 1
        return await original_many(self, query, args, timeout, **kw)

    async def counted_plain(self, query, *args, timeout=None):  # type: ignore[no-untyped-def]
        if not args:  # a simple query (BEGIN, COMMIT, the reset query) skips _execute
            counts[_phase.get()] += 1
        return await original_plain(self, query, *args, timeout=timeout)

    asyncpg.connection.Connection._execute = counted  # type: ignore[method-assign]
    asyncpg.connection.Connection._executemany = counted_many  # type: ignore[method-assign]
    asyncpg.connection.Connection.execute = counted_plain  # type: ignore[method-assign]
    return counts


# Which side a statement is counted for; tasks inherit it from where they were created.
_phase: Any = None


async def run(messages: int) -> dict[str, float]:
    import contextvars

    global _phase
    _phase = contextvars.ContextVar("phase", default="other")
    counts = _count_statements()

    from shvya_common.bus import Worker
    from shvya_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
    from shvya_common.runtime import platform
    from shvya_common.settings import CommonSettings
    from shvya_dispatch.app import make_handlers as dispatch_handlers
    from shvya_dispatch.settings import DispatchSettings
    from shvya_engage.app import make_handlers as engage_handlers
    from shvya_engage.settings import EngageSettings

    tmp = Path(tempfile.mkdtemp(prefix="shvya-roundtrips-"))
    nats_server = EmbeddedNats(tmp / "nats", free_port(), free_port())
    pg = EmbeddedPostgres(tmp / "pg", free_port())
    nats_server.start()
    pg.start()
    env = {
        "NATS_URL": nats_server.url,
        "DATABASE_URL": pg.url,
        "LINK_SECRET": "x" * 48,
        "SHVYA_IGNORE_DOTENV": "1",
        "LOG_LEVEL": "warning",
    }
    os.environ.update(env)
    try:
        common = CommonSettings()
        async with platform(common, "bench") as plat, contextlib.AsyncExitStack() as stack:
            company = await plat.pool.fetchval(
                "INSERT INTO companies (name) VALUES ('Round trips') RETURNING id"
            )
            from shvya_common.contracts import EngageParams

            _phase.set("ingest")
            for i in range(messages):
                lead = await plat.pool.fetchval(
                    "INSERT INTO leads (company_id, phone_e164, contact_name, last_inbound_at)"
                    " VALUES ($1, $2, 'Lead', now()) RETURNING id",
                    company,
                    f"+1415300{i:04d}",
                )
                msg = await plat.pool.fetchval(
                    "INSERT INTO messages (company_id, lead_id, direction, channel, body, status)"
                    " VALUES ($1, $2, 'inbound', 'log', 'Do you ship to Berlin?', 'received')"
                    " RETURNING id",
                    company,
                    lead,
                )
                await plat.bus.enqueue_job(
                    "ai.engage",
                    EngageParams(lead_id=lead, message_id=msg),
                    company_id=company,
                    lead_id=lead,
                )
            await plat.bus.publisher.flush()
            counts.clear()
            workers = []
            for name, factory, settings in (
                ("engage", engage_handlers, EngageSettings()),
                ("dispatch", dispatch_handlers, DispatchSettings()),
            ):
                _phase.set(name)
                handlers = await factory(settings)(plat, stack)
                worker = Worker(
                    service=name,
                    bus=plat.bus,
                    nc=plat.nc,
                    handlers=handlers,
                    retry_schedule=[1.0],
                    concurrency=16,
                    ack_wait=30,
                    poll_seconds=0.05,
                )
                await worker.start()
                workers.append(worker)
            _phase.set("other")
            while True:
                done = await plat.pool.fetchval(
                    "SELECT count(*) FROM messages WHERE direction = 'outbound'"
                    " AND sent_at IS NOT NULL"
                )
                if done >= messages:
                    break
                await asyncio.sleep(0.2)
            for worker in workers:
                await worker.stop()
    finally:
        nats_server.stop()
        pg.stop()
    return {k: v / messages for k, v in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--ref", help="count the code at this git ref instead")
    args = parser.parse_args()
    if args.ref:
        dest = Path(tempfile.mkdtemp(prefix="shvya-ref-"))
        data = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", args.ref, "libs", "services"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=data, check=True)
        paths = [dest / "libs/common/src"] + [
            dest / "services" / s / "src" for s in ("ingest", "engage", "dispatch", "scheduler")
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths))}
        cmd = [sys.executable, __file__, "--messages", str(args.messages)]
        sys.exit(subprocess.run(cmd, env=env, check=False).returncode)
    result = asyncio.run(run(args.messages))
    print(json.dumps({k: round(v, 2) for k, v in sorted(result.items())}))


if __name__ == "__main__":
    main()
