"""WhatsApp Cloud `failed` statuses that reach ingest before dispatch recorded their wamid: the
status policy acts on them once dispatch has (shvya_ingest/late_failures.py), in-process
against real NATS and PostgreSQL."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from shvya_common.bus.ledgers import SendLedger
from shvya_ingest import late_failures
from shvya_ingest.late_failures import act_on_late_failures
from shvya_ingest.status_policy import StatusPolicyConfig
from tests import meta_samples as samples
from tests.integration.webhook_support import (
    database,
    events,
    ingest_client,
    jobs_in_stream,
)
from tests.integration.webhook_support import post_accepted as post
from tests.support import eventually

pytestmark = pytest.mark.integration

PHONE = "16505551234"
OUT = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI1RjQyNUE3NEYxMzAzMzQ5MkEL"
WINDOW = samples.failed(OUT, 131047, "Re-engagement message")
CONFIG = StatusPolicyConfig()


@pytest.fixture
async def client(base_env):
    # The reconciler's own loop makes its first pass at start-up and then waits: these tests
    # run their passes themselves.
    async with ingest_client(base_env, WHATSAPP_STATUS_LATE_POLL_SECONDS="3600") as c:
        yield c


async def sending(conn) -> uuid.UUID:
    """An outbound WhatsApp message dispatch is sending: Graph has not answered yet."""
    company, lead = await conn.fetchrow(
        "SELECT company_id, id FROM leads ORDER BY created_at LIMIT 1"
    )
    return await conn.fetchval(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body, status, attempts,"
        " recipient, send_key, priority, meta)"
        " VALUES ($1, $2, 'outbound', 'whatsapp_cloud', 'Yes, in blue.', 'sending', 1,"
        " '+16505551234', $3, 100, '{\"purpose\": \"reply\"}')"
        " RETURNING id",
        company,
        lead,
        f"reply:{uuid.uuid4()}",
    )


async def fallback_template(conn) -> None:
    company = await conn.fetchval("SELECT company_id FROM leads")
    await conn.execute(
        "INSERT INTO templates (company_id, name, channel, language, body, variables)"
        " VALUES ($1, 'reengage', 'whatsapp_cloud', 'en_US', 'Hi {{1}}', '[\"first_name\"]')",
        company,
    )
    await conn.execute(
        'UPDATE companies SET settings = settings || \'{"whatsapp_fallback_template": "reengage"}\''
    )


async def due(conn) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM provider_statuses WHERE policy_due_at IS NOT NULL"
    )


async def test_a_window_failure_before_the_wamid_requests_the_fallback_once(
    client, db_url, plat, nats_url, prefix
):
    """A 131047 `failed` that beats dispatch's record of the wamid requests the fallback
    template once dispatch records it, and neither a second pass nor Meta repeating the
    status requests it again."""
    await post(client, samples.messages([samples.text("wamid.lf1", PHONE, "Hi")]))
    async with database(db_url) as conn:
        message_id = await sending(conn)
        await fallback_template(conn)
    for _ in range(2):
        await post(client, samples.statuses([WINDOW]))
    async with database(db_url) as conn:
        pending = await conn.fetchval(
            "SELECT count(*) FROM provider_statuses WHERE message_id IS NULL"
        )
        assert pending == 1 and await due(conn) == 0
    assert await SendLedger(plat.pool).record_sent(
        message_id, 1, status="sent", provider_message_id=OUT, meta={}
    )
    async with database(db_url) as conn:
        assert await due(conn) == 1
        (failed,) = await events(conn, "message.delivery_failed")
        assert failed["late_match"] is True and failed["message_id"] == str(message_id)

    assert await act_on_late_failures(plat.bus, CONFIG) == Counter(fallback_requested=1)
    assert await act_on_late_failures(plat.bus, CONFIG) == Counter()
    await post(client, samples.statuses([WINDOW]))
    assert await act_on_late_failures(plat.bus, CONFIG) == Counter()

    async with database(db_url) as conn:
        sends = await conn.fetch("SELECT send_key FROM messages WHERE send_key LIKE 'fallback:%'")
        requested = await events(conn, "message.fallback_requested")
        policy = await events(conn, "message.delivery_policy")
        assert await due(conn) == 0
    assert [r["send_key"] for r in sends] == [f"fallback:{message_id}"]
    assert len(requested) == 1 and requested[0]["message_id"] == str(message_id)
    assert [(p["code"], p["outcome"]) for p in policy] == [(131047, "fallback_requested")]
    await jobs_in_stream(nats_url, prefix, lambda c: c.get("dispatch.send") == 1)


@pytest.mark.parametrize("when", ["same-delivery", "after-the-wamid"])
async def test_a_late_failure_of_a_delivered_message_is_not_acted_on(client, db_url, plat, when):
    """A late 131049 `failed` for a message the phone reported delivered (before the wamid too,
    or after dispatch recorded it and before the policy ran) sends nothing again."""
    await post(client, samples.messages([samples.text("wamid.lf2", PHONE, "Hi")]))
    async with database(db_url) as conn:
        message_id = await sending(conn)
    failed = samples.failed(OUT, 131049, "This message was not delivered")
    delivered = samples.status(OUT, "delivered", samples.TS + 10)
    await post(
        client, samples.statuses([failed, delivered] if when == "same-delivery" else [failed])
    )
    await SendLedger(plat.pool).record_sent(
        message_id, 1, status="sent", provider_message_id=OUT, meta={}
    )
    if when == "after-the-wamid":
        await post(client, samples.statuses([delivered]))
        expected = Counter({late_failures.PASSED_OVER: 1})
    else:
        expected = Counter()
    assert await act_on_late_failures(plat.bus, CONFIG) == expected
    assert await act_on_late_failures(plat.bus, CONFIG) == Counter()
    async with database(db_url) as conn:
        outbound = await conn.fetchval("SELECT count(*) FROM messages WHERE direction = 'outbound'")
        state = await conn.fetchval(
            "SELECT delivery_status FROM messages WHERE id = $1", message_id
        )
        assert await events(conn, "message.delivery_policy") == []
        assert await due(conn) == 0
    assert outbound == 1 and state == "delivered"


async def test_a_pass_cut_short_by_an_outage_leaves_the_failure_due(
    client, db_url, plat, monkeypatch
):
    """An outage after the policy decided rolls the decision back with its mark, and the next
    pass takes it once: no decision lost, none taken twice."""
    await post(client, samples.messages([samples.text("wamid.lf3", PHONE, "Hi")]))
    async with database(db_url) as conn:
        message_id = await sending(conn)
        await fallback_template(conn)
    await post(client, samples.statuses([WINDOW]))
    await SendLedger(plat.pool).record_sent(
        message_id, 1, status="sent", provider_message_id=OUT, meta={}
    )
    real = late_failures.apply_failure_policy

    async def then_the_database_goes(*args, **kwargs):
        await real(*args, **kwargs)
        raise ConnectionError("connection lost")

    monkeypatch.setattr(late_failures, "apply_failure_policy", then_the_database_goes)
    with pytest.raises(ConnectionError):
        await act_on_late_failures(plat.bus, CONFIG)
    async with database(db_url) as conn:
        assert await due(conn) == 1
        assert (
            await conn.fetchval("SELECT count(*) FROM messages WHERE send_key LIKE 'fallback:%'")
            == 0
        )
    monkeypatch.setattr(late_failures, "apply_failure_policy", real)
    assert await act_on_late_failures(plat.bus, CONFIG) == Counter(fallback_requested=1)
    async with database(db_url) as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM messages WHERE send_key LIKE 'fallback:%'")
            == 1
        )
        assert len(await events(conn, "message.fallback_requested")) == 1


async def test_a_failure_the_policy_cannot_handle_is_cleared_and_recorded(
    client, db_url, plat, monkeypatch
):
    """A due failure the policy fails on even by itself is cleared with a `failed`
    `message.delivery_policy` event, so it cannot hold back the next one."""
    await post(client, samples.messages([samples.text("wamid.lf4", PHONE, "Hi")]))
    async with database(db_url) as conn:
        message_id = await sending(conn)
    await post(client, samples.statuses([WINDOW]))
    await SendLedger(plat.pool).record_sent(
        message_id, 1, status="sent", provider_message_id=OUT, meta={}
    )

    async def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(late_failures, "apply_failure_policy", broken)
    assert await act_on_late_failures(plat.bus, CONFIG) == Counter(failed=1)
    assert await act_on_late_failures(plat.bus, CONFIG) == Counter()
    async with database(db_url) as conn:
        (policy,) = await events(conn, "message.delivery_policy")
        assert await due(conn) == 0
    assert policy["outcome"] == "failed" and "KeyError" in policy["reason"]
    assert policy["message_id"] == str(message_id)


async def test_ingest_acts_on_a_late_failure_by_itself(base_env, db_url, plat):
    """Running ingest holds a late 131047 failure of a company without a fallback template
    shortly after dispatch records the wamid, once."""
    async with ingest_client(base_env, WHATSAPP_STATUS_LATE_POLL_SECONDS="0.1") as client:
        await post(client, samples.messages([samples.text("wamid.lf5", PHONE, "Hi")]))
        async with database(db_url) as conn:
            message_id = await sending(conn)
        await post(client, samples.statuses([WINDOW]))
        await SendLedger(plat.pool).record_sent(
            message_id, 1, status="sent", provider_message_id=OUT, meta={}
        )
        async with database(db_url) as conn:

            async def held():
                return await events(conn, "message.held")

            (event,) = await eventually(held, timeout=10)
            assert await due(conn) == 0
    assert event["message_id"] == str(message_id)
    assert "no fallback template" in event["reason"]
    async with database(db_url) as conn:
        assert len(await events(conn, "message.delivery_policy")) == 1
        assert (
            await conn.fetchval("SELECT count(*) FROM messages WHERE direction = 'outbound'") == 1
        )
