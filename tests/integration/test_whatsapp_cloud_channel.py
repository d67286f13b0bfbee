"""The WhatsApp Cloud channel end to end: the real dispatch wiring and handler, a real database,
and a local server speaking Graph's wire format. Each request is checked field by field."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from shvya_common.db import create_pool
from shvya_common.errors import DeferJob, PermanentError, RetryableError
from tests.fakes.graph_server import Drop, FakeGraph, GraphFault, ServerError, Slow
from tests.integration.dispatch_support import (
    PHONE_ID,
    TOKEN,
    Dispatcher,
    dispatch_settings,
    event_types,
    make_company,
    make_lead,
    make_template,
    message_row,
    queue_send,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(db_url):
    pool = await create_pool(db_url, 1, 8)
    yield pool
    await pool.close()


@pytest.fixture
async def graph():
    async with FakeGraph(token=TOKEN, phone_number_id=PHONE_ID, version="v23.0") as server:
        yield server


@pytest.fixture
async def dispatcher(pool, graph, db_url):
    async with Dispatcher(pool, dispatch_settings(db_url, graph)) as d:
        yield d


@pytest.fixture
async def company(pool):
    return await make_company(pool)


@pytest.fixture
async def lead(pool, company):
    """A lead who wrote a minute ago: inside the 24-hour window."""
    return await make_lead(pool, company, last_inbound_at=datetime.now(UTC) - timedelta(minutes=1))


async def test_text_send_matches_graphs_wire_format_and_stores_the_wamid(
    dispatcher, graph, pool, company, lead
):
    """A reply is one POST to /v23.0/{phone_number_id}/messages with the bearer token and the
    text payload, and the returned wamid becomes the message's provider id."""
    message_id, params = await queue_send(pool, company, lead, text="Our prices start at 10 EUR.")
    result = await dispatcher.send(message_id, params)

    assert len(graph.requests) == 1
    request = graph.requests[0]
    assert request.method == "POST"
    assert request.path == f"/v23.0/{PHONE_ID}/messages"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15551230001",
        "type": "text",
        "text": {"body": "Our prices start at 10 EUR."},
    }
    row = await message_row(pool, message_id)
    assert row["status"] == "sent" and result["status"] == "sent"
    assert row["provider_message_id"] == request.wamid
    assert row["meta"]["wa_id"] == "15551230001" and row["sent_at"] is not None
    assert "message.sent" in await event_types(pool, company)


async def test_version_and_phone_number_id_come_from_settings(pool, db_url, company, lead):
    """WHATSAPP_CLOUD_API_VERSION (bare or with v) and the phone number id shape the URL."""
    async with FakeGraph(token=TOKEN, phone_number_id="777000111", version="v21.0") as other:
        settings = dispatch_settings(db_url, other, whatsapp_cloud_api_version="21.0")
        async with Dispatcher(pool, settings) as d:
            message_id, params = await queue_send(pool, company, lead)
            await d.send(message_id, params)
        assert [r.path for r in other.requests] == ["/v21.0/777000111/messages"]
        assert (await message_row(pool, message_id))["status"] == "sent"


async def test_template_send_fills_body_parameters_from_lead_data(dispatcher, graph, pool, company):
    """A template send names template and language and fills {{n}} from the lead's fields."""
    lead = await make_lead(pool, company, contact_name="Asha Rao")  # never wrote: needs a template
    template = await make_template(
        pool,
        company,
        "order_update",
        "Hi {{1}}, we will call {{2}} today.",
        ["first_name", "phone"],
        language="en_GB",
    )
    message_id, params = await queue_send(pool, company, lead, template_id=template)
    await dispatcher.send(message_id, params)

    assert graph.requests[0].body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15551230001",
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "en_GB"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Asha"},
                        {"type": "text", "text": "+15551230001"},
                    ],
                }
            ],
        },
    }
    row = await message_row(pool, message_id)
    assert row["status"] == "sent" and row["provider_message_id"] == graph.requests[0].wamid
    assert row["meta"]["template"]["text"] == "Hi Asha, we will call +15551230001 today."


async def test_unapproved_template_is_never_requested(dispatcher, graph, pool, company, lead):
    """A template not yet approved fails permanently without a request to Graph."""
    template = await make_template(pool, company, "promo", "Sale!", [], status="pending")
    message_id, params = await queue_send(pool, company, lead, template_id=template)
    with pytest.raises(PermanentError, match="approved"):
        await dispatcher.send(message_id, params)
    assert graph.requests == []


@pytest.mark.parametrize("code", [130429, 131056, 80007, 4, 131000])
async def test_rate_limit_codes_are_retried(dispatcher, graph, pool, company, lead, code):
    """Rate limits and Meta-side failures raise RetryableError (retried on the job schedule)."""
    graph.script(GraphFault(code))
    message_id, params = await queue_send(pool, company, lead)
    with pytest.raises(RetryableError, match=str(code)) as caught:
        await dispatcher.send(message_id, params)
    assert not isinstance(caught.value, PermanentError)
    assert len(graph.requests) == 1


@pytest.mark.parametrize("fault", [ServerError(502), GraphFault(131000, status=500)])
async def test_server_errors_are_retried(dispatcher, graph, pool, company, lead, fault):
    """A 5xx, with or without a Graph body, is retryable."""
    graph.script(fault)
    message_id, params = await queue_send(pool, company, lead)
    with pytest.raises(RetryableError):
        await dispatcher.send(message_id, params)


@pytest.mark.parametrize("fault", [Slow(3.0), Drop()], ids=["read-timeout", "dropped"])
async def test_lost_answers_are_never_retried(pool, db_url, company, lead, fault):
    """A request that reached Meta but got no answer (read timeout, dropped connection) is
    not retryable: repeating it could deliver the message twice."""
    async with FakeGraph(token=TOKEN, phone_number_id=PHONE_ID) as slow:
        slow.script(fault)
        async with Dispatcher(pool, dispatch_settings(db_url, slow)) as d:
            message_id, params = await queue_send(pool, company, lead)
            outcome = await d.send(message_id, params)
            assert outcome["status"] == "unknown" and "not repeated" in outcome["reason"]
            row = await pool.fetchrow(
                "SELECT status, last_error FROM messages WHERE id = $1", message_id
            )
            assert row["status"] == "unknown"
            assert len(slow.requests) == 1


async def test_unreachable_graph_is_retried(pool, db_url, company, lead):
    """Connection refused (the request never left) is a retryable error."""
    async with FakeGraph(token=TOKEN, phone_number_id=PHONE_ID) as slow:
        base = slow.base_url
    settings = dispatch_settings(
        db_url,
        None,
        whatsapp_cloud_phone_id=PHONE_ID,
        whatsapp_cloud_token=TOKEN,
        whatsapp_cloud_base_url=base,
    )
    async with Dispatcher(pool, settings) as d:
        other = await make_lead(
            pool, company, phone="+15551230002", last_inbound_at=datetime.now(UTC)
        )
        message_id, params = await queue_send(pool, company, other, to="+15551230002")
        with pytest.raises(RetryableError, match="unreachable"):
            await d.send(message_id, params)


@pytest.mark.parametrize("code", [131026, 131051, 132000, 132001])
async def test_permanent_codes_dead_letter_with_the_reason(
    dispatcher, graph, pool, company, lead, code
):
    """Undeliverable, unsupported and template errors raise PermanentError naming the code."""
    graph.script(GraphFault(code))
    message_id, params = await queue_send(pool, company, lead)
    with pytest.raises(PermanentError, match=f"error {code}"):
        await dispatcher.send(message_id, params)


async def test_marketing_opt_out_suppresses_the_lead_for_marketing(
    dispatcher, graph, pool, company, lead
):
    """131050 dead-letters the send and suppresses the number for marketing: later follow-ups
    are suppressed without a request, while a reply still goes out."""
    graph.script(GraphFault(131050))
    message_id, params = await queue_send(pool, company, lead, purpose="marketing")
    with pytest.raises(PermanentError, match="131050"):
        await dispatcher.send(message_id, params)
    suppression = await pool.fetchrow("SELECT channel, address, scope FROM suppressions")
    assert dict(suppression) == {
        "channel": "whatsapp_cloud",
        "address": "+15551230001",
        "scope": "marketing",
    }
    assert "lead.suppressed" in await event_types(pool, company)

    followup_id, followup = await queue_send(pool, company, lead, purpose="followup")
    assert (await dispatcher.send(followup_id, followup))["status"] == "suppressed"
    assert len(graph.requests) == 1
    reply_id, reply = await queue_send(pool, company, lead, to="+15551230001", purpose="reply")
    await pool.execute("UPDATE send_pacing SET next_allowed_at = now()")
    assert (await dispatcher.send(reply_id, reply))["status"] == "sent"


async def test_window_refusal_converts_to_the_fallback_template(
    dispatcher, graph, pool, company, lead
):
    """When Graph answers 131047 the free text is not retried: the company's fallback template
    goes instead, in the same send, and the conversion is recorded."""
    await pool.execute(
        'UPDATE companies SET settings = \'{"whatsapp_fallback_template": "reengage"}\''
    )
    await make_template(pool, company, "reengage", "Hi {{1}}, reply to continue.", ["first_name"])
    graph.script(GraphFault(131047))
    message_id, params = await queue_send(pool, company, lead)
    result = await dispatcher.send(message_id, params)

    assert [r.body["type"] for r in graph.requests] == ["text", "template"]
    assert graph.requests[1].body["template"]["name"] == "reengage"
    row = await message_row(pool, message_id)
    assert result["status"] == row["status"] == "sent"
    assert row["provider_message_id"] == graph.requests[1].wamid
    assert row["meta"]["converted_to_template"]["name"] == "reengage"
    assert "131047" in row["meta"]["converted_to_template"]["reason"]
    assert "message.converted_to_template" in await event_types(pool, company)


async def test_window_refusal_without_fallback_holds_the_message(
    dispatcher, graph, pool, company, lead
):
    """With no fallback template a 131047 send is held (with an event), never retried."""
    graph.script(GraphFault(131047))
    message_id, params = await queue_send(pool, company, lead)
    result = await dispatcher.send(message_id, params)
    row = await message_row(pool, message_id)
    assert result["status"] == row["status"] == "held"
    assert "131047" in row["last_error"] and "fallback" in row["last_error"]
    assert "message.held" in await event_types(pool, company)
    assert len(graph.requests) == 1


async def test_expired_token_pauses_the_company_and_defers_its_sends(
    dispatcher, graph, pool, db_url, company, lead
):
    """190 pauses WhatsApp Cloud for the company (one event) and defers the send; later sends
    are deferred without a request; other companies still send; a new token lifts the pause."""
    graph.script(GraphFault(190))
    message_id, params = await queue_send(pool, company, lead)
    with pytest.raises(DeferJob) as first:
        await dispatcher.send(message_id, params)
    pause = await pool.fetchrow("SELECT * FROM channel_pauses")
    assert pause["company_id"] == company and pause["channel"] == "whatsapp_cloud"
    assert pause["error_code"] == 190 and pause["paused_until"] is None
    assert pause["credential_fingerprint"] and TOKEN not in pause["credential_fingerprint"]
    now = await pool.fetchval("SELECT now()")
    assert timedelta(seconds=290) < first.value.until - now <= timedelta(seconds=300)

    other_lead = await make_lead(
        pool, company, phone="+15551230009", last_inbound_at=datetime.now(UTC)
    )
    second_id, second = await queue_send(pool, company, other_lead, to="+15551230009")
    with pytest.raises(DeferJob, match="paused"):
        await dispatcher.send(second_id, second)
    assert len(graph.requests) == 1
    assert (await event_types(pool, company)).count("channel.paused") == 1

    elsewhere = await make_company(pool)
    elsewhere_lead = await make_lead(pool, elsewhere, last_inbound_at=datetime.now(UTC))
    third_id, third = await queue_send(pool, elsewhere, elsewhere_lead)
    assert (await dispatcher.send(third_id, third))["status"] == "sent"

    graph.token = "EAAG-rotated-token"
    rotated = dispatch_settings(db_url, graph)
    async with Dispatcher(pool, rotated) as d:
        assert (await d.send(second_id, second))["status"] == "sent"


@pytest.mark.parametrize("code", [368, 131048])
async def test_policy_and_spam_blocks_pause_until_the_block_ends(
    pool, graph, db_url, company, lead, code
):
    """368 and 131048 pause the company for WHATSAPP_CLOUD_BLOCK_PAUSE_SECONDS; the send is
    deferred to the re-check or the block's end, whichever is first, and lifts on its own."""
    settings = dispatch_settings(db_url, graph, whatsapp_cloud_block_pause_seconds=120)
    async with Dispatcher(pool, settings) as d:
        graph.script(GraphFault(code))
        message_id, params = await queue_send(pool, company, lead)
        with pytest.raises(DeferJob) as caught:
            await d.send(message_id, params)
        pause = await pool.fetchrow("SELECT * FROM channel_pauses")
        assert pause["error_code"] == code and pause["credential_fingerprint"] is None
        assert caught.value.until == pause["paused_until"]
        assert (
            timedelta(seconds=110)
            < pause["paused_until"] - pause["paused_at"]
            <= timedelta(seconds=120)
        )
        await pool.execute("UPDATE channel_pauses SET paused_until = now() - interval '1 second'")
        await pool.execute("UPDATE send_pacing SET next_allowed_at = now()")
        # As the timer that a deferral parks the send in would put it back.
        await pool.execute("UPDATE messages SET status = 'queued' WHERE id = $1", message_id)
        assert (await d.send(message_id, params))["status"] == "sent"


async def test_concurrent_refusals_write_one_pause_event(dispatcher, graph, pool, company):
    """Several in-flight sends refused with 190 at once record a single channel.paused event."""
    graph.script(*[GraphFault(190)] * 4)
    graph.delay = 0.2
    sends = []
    for n in range(4):
        phone = f"+1555123010{n}"
        lead = await make_lead(pool, company, phone=phone, last_inbound_at=datetime.now(UTC))
        sends.append(await queue_send(pool, company, lead, to=phone))
    outcomes = await asyncio.gather(
        *(dispatcher.send(m, p) for m, p in sends), return_exceptions=True
    )
    assert all(isinstance(o, DeferJob) for o in outcomes)
    assert (await event_types(pool, company)).count("channel.paused") == 1


async def test_token_never_appears_in_logs_errors_or_records(
    dispatcher, graph, pool, company, lead, capfd
):
    """Neither logs, nor error texts, nor stored rows ever contain the access token."""
    graph.script(GraphFault(131026), GraphFault(190))
    texts = []
    for phone in ("+15551230001", "+15551230002"):
        lead_id = await make_lead(pool, company, phone=phone) if phone.endswith("2") else lead
        await pool.execute("UPDATE leads SET last_inbound_at = now()")
        message_id, params = await queue_send(pool, company, lead_id, to=phone)
        try:
            await dispatcher.send(message_id, params)
        except Exception as err:
            texts.append(f"{type(err).__name__}: {err} {err.__cause__!r}")
    assert len(texts) == 2
    rows = await pool.fetch(
        "SELECT row_to_json(x)::text AS t FROM (SELECT * FROM events) x UNION ALL "
        "SELECT row_to_json(x)::text FROM (SELECT * FROM channel_pauses) x UNION ALL "
        "SELECT row_to_json(x)::text FROM (SELECT * FROM messages) x"
    )
    captured = capfd.readouterr()
    everything = "\n".join([*texts, *(r["t"] for r in rows), captured.out, captured.err])
    assert "131026" in everything and "190" in everything
    assert TOKEN not in everything
    assert json.dumps(TOKEN)[1:-1] not in everything
