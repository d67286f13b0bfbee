"""Pacing holds across dispatch processes: two of them, sending to one WhatsApp number."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shvya_common.contracts import SendParams
from shvya_common.embedded import free_port
from tests.fakes.graph_server import FakeGraph
from tests.integration.dispatch_support import PHONE_ID, TOKEN, make_company, make_lead
from tests.support import ServiceProcess, eventually, service_env

pytestmark = pytest.mark.e2e


async def test_two_dispatch_processes_never_send_to_one_recipient_within_15_seconds(
    plat, base_env, tmp_path
):
    """With two dispatch processes taking one send each at the same moment, the second is
    deferred through the scheduler and goes out at least 15 s after the first (by sent_at)."""
    async with FakeGraph(token=TOKEN, phone_number_id=PHONE_ID) as graph:
        # Each send stays in flight for a second, so the other process takes the other job
        # while the first holds the recipient's slot.
        graph.delay = 1.0
        env = {
            **base_env,
            "WORKER_CONCURRENCY": "1",
            "WHATSAPP_CLOUD_PHONE_ID": PHONE_ID,
            "WHATSAPP_CLOUD_TOKEN": TOKEN,
            "WHATSAPP_CLOUD_BASE_URL": graph.base_url,
        }
        procs = [
            ServiceProcess(name, service_env({**env, "METRICS_PORT": free_port()}), tmp_path)
            for name in ("dispatch", "dispatch", "scheduler")
        ]
        try:
            for proc in procs:
                proc.start()
            for proc in procs:
                await proc.wait_ready()

            company = await make_company(plat.pool)
            lead = await make_lead(plat.pool, company, last_inbound_at=datetime.now(UTC))
            ids = []
            async with plat.bus.unit() as unit:
                for n in range(2):
                    params = SendParams(
                        company_id=company,
                        lead_id=lead,
                        channel="whatsapp_cloud",
                        to="+15551230001",
                        text=f"Reply number {n + 1}",
                        send_key=f"e2e:{n}",
                    )
                    message_id, _ = await unit.request_send(params, priority=100)
                    ids.append(message_id)

            async def rows():
                return await plat.pool.fetch(
                    "SELECT id, status, sent_at, provider_message_id, meta FROM messages"
                    " WHERE id = ANY($1::uuid[]) ORDER BY sent_at NULLS LAST",
                    ids,
                )

            first, second = await eventually(
                rows, lambda rs: all(r["status"] == "sent" for r in rs), timeout=90
            )
        finally:
            for proc in procs:
                proc.stop()

    assert second["sent_at"] - first["sent_at"] >= timedelta(seconds=15)
    assert "deferred_reason" not in first["meta"]
    assert second["meta"]["deferred_reason"].startswith("pacing")
    assert datetime.fromisoformat(second["meta"]["deferred_until"]) <= second["sent_at"]
    assert len(graph.requests) == 2
    assert {r.wamid for r in graph.requests} == {
        first["provider_message_id"],
        second["provider_message_id"],
    }

    def handled(proc: ServiceProcess) -> set[str]:
        jobs = set()
        for line in proc.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") in ("job_completed", "job_deferred"):
                jobs.add(record.get("job_id"))
        return jobs

    # Both processes took part: the deferral is the other process seeing the first's lease.
    assert handled(procs[0]) and handled(procs[1])
