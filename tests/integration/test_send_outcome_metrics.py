"""`shvya_sends_total{channel,outcome}` counts the sends that fail, not only those that go.

Through the real consumer loop (JetStream, the sends ledger in PostgreSQL, dispatch's real
wiring) against a local Graph server speaking Meta's wire format: a rate-limited send is
counted `retried`, a send Meta refuses for good and one whose retries run out `dead_lettered`,
with the send's channel, as Prometheus scrapes them from prometheus_client's registry.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from shvya_common.bus import Worker
from shvya_common.contracts import SendParams
from shvya_dispatch.handlers import handle_send
from tests.fakes.graph_server import FakeGraph, GraphFault, ServerError
from tests.integration.dispatch_support import (
    PHONE_ID,
    TOKEN,
    Dispatcher,
    dispatch_settings,
    make_company,
    make_lead,
)
from tests.support import eventually

pytestmark = pytest.mark.integration

OUTCOMES = ("sent", "retried", "dead_lettered")


def counts(channel: str = "whatsapp_cloud") -> dict[str, float]:
    return {
        outcome: REGISTRY.get_sample_value(
            "shvya_sends_total", {"channel": channel, "outcome": outcome}
        )
        or 0.0
        for outcome in OUTCOMES
    }


class Sends:
    def __init__(self, plat, graph: FakeGraph) -> None:
        self.plat = plat
        self.graph = graph

    async def request(self) -> object:
        company = await make_company(self.plat.pool)
        lead = await make_lead(self.plat.pool, company, last_inbound_at=datetime.now(UTC))
        params = SendParams(
            company_id=company,
            lead_id=lead,
            channel="whatsapp_cloud",
            to="+15551230001",
            text="Thanks for writing! Here is what you asked about.",
            send_key="outcome-metrics",
        )
        async with self.plat.bus.unit() as unit:
            message_id, _ = await unit.request_send(params, priority=100)
        return message_id

    async def settles(self, message_id: object, status: str) -> None:
        async def row_status() -> str:
            return await self.plat.pool.fetchval(
                "SELECT status FROM messages WHERE id = $1", message_id
            )

        await eventually(row_status, lambda s: s == status, timeout=20)


@pytest.fixture
async def sends(plat, db_url) -> AsyncIterator[Sends]:
    """Dispatch's send worker, retrying after 0.2 s then 0.4 s (three attempts in all), with
    no pacing gap, so a retry is not deferred behind the attempt it follows."""
    async with FakeGraph(token=TOKEN, phone_number_id=PHONE_ID) as graph:
        settings = dispatch_settings(db_url, graph, policy_whatsapp_cloud_min_gap_seconds=0)
        async with Dispatcher(plat.pool, settings) as d:
            assert d.deps is not None
            worker = Worker(
                service="dispatch",
                bus=plat.bus,
                nc=plat.nc,
                handlers={"dispatch.send": functools.partial(handle_send, deps=d.deps)},
                retry_schedule=[0.2, 0.4],
                concurrency=1,
                ack_wait=5.0,
                poll_seconds=0.05,
            )
            await worker.start()
            try:
                yield Sends(plat, graph)
            finally:
                await worker.stop()


def grew(before: dict[str, float]) -> dict[str, float]:
    after = counts()
    return {outcome: after[outcome] - before[outcome] for outcome in OUTCOMES}


async def test_a_rate_limited_send_is_counted_retried_then_sent(sends):
    """Graph's 130429 (throughput limit) is retryable: the attempt counts `retried`, the
    next one `sent`."""
    before = counts()
    sends.graph.script(GraphFault(130429))
    message_id = await sends.request()
    await sends.settles(message_id, "sent")
    assert len(sends.graph.requests) == 2
    assert grew(before) == {"sent": 1, "retried": 1, "dead_lettered": 0}


async def test_a_permanently_refused_send_is_counted_dead_lettered(sends):
    """Graph's 131026 (message undeliverable) is permanent: one attempt, `dead_lettered`."""
    before = counts()
    sends.graph.script(GraphFault(131026))
    message_id = await sends.request()
    await sends.settles(message_id, "dlq")
    assert len(sends.graph.requests) == 1
    assert grew(before) == {"sent": 0, "retried": 0, "dead_lettered": 1}


async def test_a_send_whose_retries_run_out_is_counted_each_time(sends):
    """Three 502s: two attempts count `retried`, the last `dead_lettered`."""
    before = counts()
    sends.graph.script(ServerError(502), ServerError(502), ServerError(502))
    message_id = await sends.request()
    await sends.settles(message_id, "dlq")
    assert len(sends.graph.requests) == 3
    assert grew(before) == {"sent": 0, "retried": 2, "dead_lettered": 1}
