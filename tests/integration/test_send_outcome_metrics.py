"""`shvya_sends_total{channel,outcome}` counts the sends that fail, not only those that go.

Through the real consumer loop (JetStream, the sends ledger in PostgreSQL, dispatch's real
wiring) against a local Graph server speaking Meta's wire format: a rate-limited send is
counted `retried`, a send Meta refuses for good and one whose retries run out `dead_lettered`,
with the send's channel, as Prometheus scrapes them from prometheus_client's registry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from shvya_common.contracts import SendParams
from tests.fakes.graph_server import FakeGraph, GraphFault, ServerError
from tests.integration.dispatch_support import (
    PHONE_ID,
    TOKEN,
    Dispatcher,
    dispatch_settings,
    make_company,
    make_lead,
    send_worker,
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
            async with send_worker(plat, d.deps):
                yield Sends(plat, graph)


def grew(before: dict[str, float]) -> dict[str, float]:
    after = counts()
    return {outcome: after[outcome] - before[outcome] for outcome in OUTCOMES}


@pytest.mark.parametrize(
    ("faults", "settles_as", "requests", "counted"),
    [
        # Graph's 130429 (throughput limit) is retryable: `retried`, then the next one `sent`.
        ([GraphFault(130429)], "sent", 2, {"sent": 1, "retried": 1, "dead_lettered": 0}),
        # 131026 (message undeliverable) is permanent: one attempt, `dead_lettered`.
        ([GraphFault(131026)], "dlq", 1, {"sent": 0, "retried": 0, "dead_lettered": 1}),
        # Three 502s: two attempts count `retried`, the last `dead_lettered`.
        ([ServerError(502)] * 3, "dlq", 3, {"sent": 0, "retried": 2, "dead_lettered": 1}),
    ],
    ids=["rate-limited-then-sent", "refused-for-good", "retries-run-out"],
)
async def test_each_attempt_of_a_failing_send_is_counted_by_its_outcome(
    sends, faults, settles_as, requests, counted
):
    before = counts()
    sends.graph.script(*faults)
    message_id = await sends.request()
    await sends.settles(message_id, settles_as)
    assert len(sends.graph.requests) == requests
    assert grew(before) == counted
