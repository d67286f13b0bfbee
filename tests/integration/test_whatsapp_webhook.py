"""The WhatsApp Cloud API webhook in ingest, in-process against real NATS and PostgreSQL:
Meta's handshake, signatures computed here, real-shaped payloads, statuses and opt-outs."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.integration.webhook_support import (
    PHONE_NUMBER_ID,
    VERIFY_TOKEN,
    database,
    ingest_client,
    jobs_in_stream,
    meta_payload,
    post_signed,
    signature,
    status,
    text_message,
)

pytestmark = pytest.mark.integration

WAMID_A = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
WAMID_B = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgB="
OUT_WAMID = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI1RjQyNUE3NEYxMzAzMzQ5MkEA"


@pytest.fixture
async def client(base_env):
    async with ingest_client(base_env) as c:
        yield c


async def test_verify_handshake_echoes_challenge_only_with_the_right_token(client):
    """GET /webhooks/whatsapp returns hub.challenge as text/plain for the right token, else 403."""
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    ok = await client.get("/webhooks/whatsapp", params=params)
    assert ok.status_code == 200
    assert ok.text == "1158201444"
    assert ok.headers["content-type"].startswith("text/plain")
    wrong = await client.get("/webhooks/whatsapp", params={**params, "hub.verify_token": "nope"})
    assert wrong.status_code == 403
    bad_mode = await client.get("/webhooks/whatsapp", params={**params, "hub.mode": "unsubscribe"})
    assert bad_mode.status_code == 403


async def test_signature_missing_is_401_wrong_is_403_valid_is_200(client, db_url):
    """Only a body signed with the app secret is processed; others write nothing."""
    payload = meta_payload([text_message(WAMID_A, "16505551234", "Hi")])
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json"}
    missing = await client.post("/webhooks/whatsapp", content=body, headers=headers)
    assert missing.status_code == 401
    forged = signature(body, secret="not-the-app-secret")
    wrong = await client.post(
        "/webhooks/whatsapp", content=body, headers={**headers, "x-hub-signature-256": forged}
    )
    assert wrong.status_code == 403
    tampered = body.replace(b"Hi", b"Yo")
    replayed = await client.post(
        "/webhooks/whatsapp",
        content=tampered,
        headers={**headers, "x-hub-signature-256": signature(body)},
    )
    assert replayed.status_code == 403
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    valid = await client.post(
        "/webhooks/whatsapp",
        content=body,
        headers={**headers, "x-hub-signature-256": signature(body)},
    )
    assert valid.status_code == 200, valid.text
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 1


async def test_meta_payload_is_filed_once_when_posted_three_times(client, db_url, nats_url, prefix):
    """Messages with contacts are filed once each (by wamid), with names, however often sent,
    even when one repeats inside a batch."""
    payload = meta_payload(
        messages=[
            text_message(WAMID_A, "16505551234", "Does it come in another color?"),
            text_message(WAMID_B, "919876543210", "Kya price hai? ₹ में बताइए"),
            text_message(WAMID_A, "16505551234", "Does it come in another color?"),
        ],
        contacts=[("16505551234", "Sheena Nelson"), ("919876543210", "Asha Rao")],
    )
    answers = [await post_signed(client, payload) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert (answers[0].json()["messages"], answers[0].json()["duplicates"]) == (2, 1)
    assert (answers[2].json()["messages"], answers[2].json()["duplicates"]) == (0, 3)
    async with database(db_url) as conn:
        rows = await conn.fetch(
            "SELECT m.provider_message_id, m.channel, m.body, l.phone_e164, l.contact_name,"
            " l.last_inbound_at FROM messages m JOIN leads l ON l.id = m.lead_id"
            " ORDER BY l.phone_e164"
        )
        assert [
            (r["provider_message_id"], r["channel"], r["phone_e164"], r["contact_name"])
            for r in rows
        ] == [
            (WAMID_A, "whatsapp_cloud", "+16505551234", "Sheena Nelson"),
            (WAMID_B, "whatsapp_cloud", "+919876543210", "Asha Rao"),
        ]
        assert rows[1]["body"] == "Kya price hai? ₹ में बताइए"
        # The 24-hour window opens at the contact's own timestamp, not at a retry's arrival.
        assert int(rows[0]["last_inbound_at"].timestamp()) == 1749416383
        jobs = await conn.fetch("SELECT task_name FROM jobs")
        assert [j["task_name"] for j in jobs] == ["ai.engage", "ai.engage"]
    await jobs_in_stream(nats_url, prefix, lambda c: c == {"ai.engage": 2})


async def test_concurrent_redeliveries_are_filed_once_and_all_answered_200(client, db_url):
    """Meta delivering the same batch several times at once files each message once."""
    payload = meta_payload(
        [text_message(WAMID_A, "16505551234", "one"), text_message(WAMID_B, "16505551234", "two")]
    )
    answers = await asyncio.gather(*(post_signed(client, payload) for _ in range(4)))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert sum(a.json()["messages"] for a in answers) == 2
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 2
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 2
        assert await conn.fetchval("SELECT count(*) FROM leads") == 1


async def test_company_is_resolved_from_the_business_phone_number_id(client, db_url):
    """A registered phone_number_id files into its company; one no company owns is skipped
    and recorded (an event with no company), never filed into the default company."""
    async with database(db_url) as conn:
        acme = await conn.fetchval("INSERT INTO companies (name) VALUES ('Acme') RETURNING id")
        await conn.execute(
            "INSERT INTO inbound_routes (channel, address, company_id)"
            " VALUES ('whatsapp_cloud', $1, $2)",
            PHONE_NUMBER_ID,
            acme,
        )
    mine = meta_payload([text_message(WAMID_A, "16505551234", "for acme")])
    other = meta_payload(
        [text_message(WAMID_B, "16505551234", "for nobody")], phone_number_id="999000111"
    )
    assert (await post_signed(client, mine)).status_code == 200
    skipped = await post_signed(client, other)
    assert skipped.status_code == 200, skipped.text
    assert (skipped.json()["messages"], skipped.json()["skipped"]) == (0, 1)
    async with database(db_url) as conn:
        rows = await conn.fetch(
            "SELECT m.body, c.name, c.is_default FROM messages m"
            " JOIN companies c ON c.id = m.company_id ORDER BY m.body"
        )
        record = await conn.fetchrow(
            "SELECT company_id, payload FROM events WHERE type = 'whatsapp.entry_skipped'"
        )
    assert [(r["body"], r["name"], r["is_default"]) for r in rows] == [
        ("for acme", "Acme", False),
    ]
    assert record["company_id"] is None
    assert record["payload"] | {} == {
        "phone_number_id": "999000111",
        "waba_id": "102290129340398",
        "reason": "unrouted",
        "field": "messages",
        "messages": 1,
        "statuses": 0,
    }


async def _outbound(conn, wamid: str) -> uuid.UUID:
    """An outbound message dispatch has sent (it carries Meta's wamid)."""
    company, lead = await conn.fetchrow(
        "SELECT company_id, id FROM leads ORDER BY created_at LIMIT 1"
    )
    return await conn.fetchval(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body, status,"
        " provider_message_id, recipient) VALUES ($1, $2, 'outbound', 'whatsapp_cloud',"
        " 'Yes, in blue.', 'sent', $3, '+16505551234') RETURNING id",
        company,
        lead,
        wamid,
    )


async def test_statuses_move_forward_only_and_duplicates_change_nothing(client, db_url):
    """sent then read then a late delivered: the state ends at read and each status is one event."""
    await post_signed(client, meta_payload([text_message(WAMID_A, "16505551234", "Hi")]))
    async with database(db_url) as conn:
        message_id = await _outbound(conn, OUT_WAMID)
    for batch in (
        [status(OUT_WAMID, "sent", 1750857384)],
        [status(OUT_WAMID, "read", 1750857390), status(OUT_WAMID, "sent", 1750857384)],
        [status(OUT_WAMID, "delivered", 1750857386)],
        [status(OUT_WAMID, "read", 1750857390)],
    ):
        response = await post_signed(client, meta_payload(statuses=batch))
        assert response.status_code == 200, response.text
    async with database(db_url) as conn:
        row = await conn.fetchrow(
            "SELECT status, delivery_status, delivered_at, read_at FROM messages WHERE id = $1",
            message_id,
        )
        events = await conn.fetch(
            "SELECT type, payload->>'status' AS status FROM events"
            " WHERE payload->>'message_id' = $1 ORDER BY created_at, type",
            str(message_id),
        )
        stored = await conn.fetchval("SELECT count(*) FROM provider_statuses")
    assert row["status"] == "sent"  # dispatch's ledger is left alone
    assert row["delivery_status"] == "read"
    assert int(row["read_at"].timestamp()) == 1750857390
    assert int(row["delivered_at"].timestamp()) == 1750857386
    assert sorted(e["type"] for e in events) == [
        "message.delivered",
        "message.provider_sent",
        "message.read",
    ]
    assert stored == 3


async def test_failed_status_records_the_error_once(client, db_url):
    """A failed status with errors[] records the error on the message and one event."""
    await post_signed(client, meta_payload([text_message(WAMID_A, "16505551234", "Hi")]))
    async with database(db_url) as conn:
        message_id = await _outbound(conn, OUT_WAMID)
    failed = status(
        OUT_WAMID,
        "failed",
        1750857390,
        errors=[
            {
                "code": 131026,
                "title": "Message undeliverable",
                "message": "Message undeliverable",
                "error_data": {"details": "Receiver is incapable of receiving this message"},
            }
        ],
    )
    for batch in ([status(OUT_WAMID, "sent", 1750857384)], [failed], [failed]):
        assert (await post_signed(client, meta_payload(statuses=batch))).status_code == 200
    async with database(db_url) as conn:
        row = await conn.fetchrow(
            "SELECT delivery_status, delivery_error FROM messages WHERE id = $1", message_id
        )
        failures = await conn.fetch(
            "SELECT payload FROM events WHERE type = 'message.delivery_failed'"
        )
    assert row["delivery_status"] == "failed"
    assert row["delivery_error"].startswith("131026: Message undeliverable")
    assert "incapable" in row["delivery_error"]
    assert len(failures) == 1
    assert failures[0]["payload"]["errors"][0]["code"] == 131026


async def test_status_that_beats_the_wamid_applies_when_dispatch_records_it(client, db_url):
    """A status for a wamid no message carries yet waits, then applies when the id is stored."""
    await post_signed(client, meta_payload([text_message(WAMID_A, "16505551234", "Hi")]))
    early = meta_payload(statuses=[status(OUT_WAMID, "delivered", 1750857386)])
    assert (await post_signed(client, early)).status_code == 200
    async with database(db_url) as conn:
        message_id = await _outbound(conn, "wamid.placeholder")
        assert (
            await conn.fetchval("SELECT delivery_status FROM messages WHERE id = $1", message_id)
            is None
        )
        await conn.execute(
            "UPDATE messages SET provider_message_id = $2 WHERE id = $1", message_id, OUT_WAMID
        )
        row = await conn.fetchrow(
            "SELECT delivery_status, delivered_at FROM messages WHERE id = $1", message_id
        )
        event = await conn.fetchval("SELECT payload FROM events WHERE type = 'message.delivered'")
    assert row["delivery_status"] == "delivered"
    assert int(row["delivered_at"].timestamp()) == 1750857386
    assert event["late_match"] is True and event["message_id"] == str(message_id)


async def test_three_megabyte_payload_is_accepted_and_filed(client, db_url):
    """A ~3 MB signed batch (hundreds of long messages) is answered 200 with every message filed."""
    messages = [
        text_message(f"wamid.bulk{i:05d}", f"1650555{i:04d}", f"{i} " + "x" * 4090)
        for i in range(740)
    ]
    payload = meta_payload(messages)
    assert len(json.dumps(payload, separators=(",", ":"))) > 3_000_000
    response = await post_signed(client, payload)
    assert response.status_code == 200, response.text[:500]
    assert response.json()["messages"] == 740
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 740
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 740


async def test_stop_in_two_languages_suppresses_and_confirms_once_without_engage(
    client, db_url, nats_url, prefix
):
    """STOP (webhook) and ARRÊTER (/inbound-message) each suppress the sender on that channel and
    queue exactly one confirmation send and no ai.engage; a sentence containing stop is chat."""
    stop = meta_payload(
        [text_message(WAMID_A, "16505551234", "  Stop! ")], contacts=[("16505551234", "Sheena")]
    )
    for _ in range(2):
        answer = await post_signed(client, stop)
        assert answer.status_code == 200
    french = {
        "phone_number": "+33612345678",
        "message_text": "arrêter",
        "channel": "whatsapp_cloud",
        "provider_message_id": "fr-1",
    }
    first = await client.post("/inbound-message", json=french)
    again = await client.post("/inbound-message", json=french)
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["job_id"] == again.json()["job_id"]
    chat = meta_payload([text_message(WAMID_B, "16505551234", "please don't stop the offers")])
    assert (await post_signed(client, chat)).status_code == 200

    async with database(db_url) as conn:
        suppressions = await conn.fetch(
            "SELECT channel, address, scope, reason FROM suppressions ORDER BY address"
        )
        confirmations = await conn.fetch(
            "SELECT id, send_key, recipient, meta->>'purpose' AS purpose, reply_to_id"
            " FROM messages WHERE direction = 'outbound' ORDER BY recipient"
        )
        engage = await conn.fetch("SELECT task_params FROM jobs WHERE task_name = 'ai.engage'")
        chat_id = await conn.fetchval(
            "SELECT id FROM messages WHERE provider_message_id = $1", WAMID_B
        )
    assert [tuple(r) for r in suppressions] == [
        ("whatsapp_cloud", "+16505551234", "all", "optout_keyword"),
        ("whatsapp_cloud", "+33612345678", "all", "optout_keyword"),
    ]
    assert [(r["recipient"], r["purpose"]) for r in confirmations] == [
        ("+16505551234", "optout_confirmation"),
        ("+33612345678", "optout_confirmation"),
    ]
    assert all(r["send_key"] == f"optout:{r['reply_to_id']}" for r in confirmations)
    assert str(confirmations[1]["id"]) == first.json()["job_id"]
    # Only the ordinary sentence got an ai.engage job.
    assert [j["task_params"]["message_id"] for j in engage] == [str(chat_id)]
    await jobs_in_stream(nats_url, prefix, lambda c: c == {"dispatch.send": 2, "ai.engage": 1})
