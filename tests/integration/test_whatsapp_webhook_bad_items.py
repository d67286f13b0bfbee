"""WhatsApp Cloud deliveries holding one item of a shape Meta's examples do not show, or one the
database will not store: that item is kept or recorded, every other item of the batch is filed or
applied, and the answer is 200. In-process ingest against real NATS and PostgreSQL."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime

import pytest

from tests import meta_samples as samples
from tests.integration.webhook_support import (
    database,
    events,
    ingest_client,
    signature,
)
from tests.integration.webhook_support import post_accepted as post

pytestmark = pytest.mark.integration

PHONE = "16505551234"
E164 = "+16505551234"
OUT = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI1RjQyNUE3NEYxMzAzMzQ5MkEA"
OUT2 = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QjQ3RkI0RTg0NjI4NjM3QkEA"


@pytest.fixture
async def client(base_env):
    async with ingest_client(base_env) as c:
        yield c


async def outbound(conn, wamid):
    """An outbound WhatsApp message dispatch has sent to the first lead (it carries a wamid)."""
    company, lead = await conn.fetchrow(
        "SELECT company_id, id FROM leads ORDER BY created_at LIMIT 1"
    )
    return await conn.fetchval(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body, status,"
        " provider_message_id, recipient, send_key, priority, meta)"
        " VALUES ($1, $2, 'outbound', 'whatsapp_cloud', 'Yes, in blue.', 'sent', $3, $4, $5,"
        ' 100, \'{"purpose": "reply"}\')'
        " RETURNING id",
        company,
        lead,
        wamid,
        E164,
        f"reply:{uuid.uuid4()}",
    )


async def test_a_contact_card_with_malformed_parts_is_filed_with_the_rest_of_its_batch(
    client, db_url
):
    """A `contacts` message whose cards carry `"phones": 5` and `"emails": true` is filed with
    what can be read of them (names and the well-formed parts), and the text beside it in the
    same delivery is filed too; the answer is 200 (it was 500 and nothing was filed)."""
    cards = [
        {
            "name": {"formatted_name": "Barbara J. Johnson", "first_name": "Barbara"},
            "phones": 5,
            "emails": [{"email": "bjohnson@example.com", "type": "WORK"}],
        },
        {
            "name": {"formatted_name": "Ravi Kumar"},
            "phones": [{"phone": "+91 98765 43210", "wa_id": "919876543210"}],
            "emails": True,
        },
    ]
    batch = samples.messages(
        [
            samples.base("wamid.card", PHONE, "contacts", contacts=cards),
            samples.text("wamid.beside", PHONE, "Here are the two people I mentioned"),
        ],
        [samples.contact(PHONE, "Sheena Nelson")],
    )
    answer = await post(client, batch)
    assert (answer["messages"], answer["skipped"], answer["failed"]) == (2, 0, 0)
    async with database(db_url) as conn:
        rows = await conn.fetch(
            "SELECT provider_message_id, body, meta FROM messages ORDER BY provider_message_id"
        )
    assert [(r["provider_message_id"], r["body"]) for r in rows] == [
        ("wamid.beside", "Here are the two people I mentioned"),
        (
            "wamid.card",
            "[Contact card: Barbara J. Johnson, bjohnson@example.com; Ravi Kumar, +91 98765 43210]",
        ),
    ]
    # Meta's cards are kept as they came.
    assert rows[1]["meta"]["contacts"] == cards


async def test_integer_timestamps_are_read_for_messages_and_statuses(client, db_url):
    """`"timestamp": 1749416383` (a number, not Meta's usual string) is read like the string:
    the message is filed at that time and the status applied at its own (both were refused
    as invalid items)."""
    message = samples.text("wamid.int", PHONE, "Is it in blue?")
    message["timestamp"] = samples.TS
    answer = await post(client, samples.messages([message]))
    assert (answer["messages"], answer["skipped"]) == (1, 0)
    async with database(db_url) as conn:
        filed = await conn.fetchval("SELECT last_inbound_at FROM leads")
        await outbound(conn, OUT)
    assert filed == datetime.fromtimestamp(samples.TS, UTC)
    delivered = samples.status(OUT, "delivered", samples.TS + 10)
    delivered["timestamp"] = samples.TS + 10
    answer = await post(client, samples.statuses([delivered]))
    assert (answer["statuses"], answer["skipped"]) == (1, 0)
    async with database(db_url) as conn:
        row = await conn.fetchrow(
            "SELECT delivery_status, delivered_at FROM messages WHERE provider_message_id = $1",
            OUT,
        )
    assert (row["delivery_status"], row["delivered_at"]) == (
        "delivered",
        datetime.fromtimestamp(samples.TS + 10, UTC),
    )


async def test_a_status_the_database_refuses_does_not_cost_the_others(client, db_url):
    """Statuses of one delivery are applied together; when the database refuses one of them
    (here a status whose id is an 8,000-character random string: PostgreSQL cannot index it,
    `index row size exceeds btree maximum`, SQLSTATE 54000, no rule of the test's making), the
    others are still applied, a new failure among them still drives the status policy, and the
    refused one is kept as `whatsapp.item_failed` with its reason; the answer is 200 (every
    status of the delivery was dropped)."""
    await post(client, samples.messages([samples.text("wamid.hi", PHONE, "Hi")]))
    async with database(db_url) as conn:
        await outbound(conn, OUT)
        await outbound(conn, OUT2)
    unindexable = "wamid." + secrets.token_urlsafe(6000)
    batch = samples.statuses(
        [
            samples.status(OUT, "delivered", samples.TS + 10),
            samples.status(unindexable, "delivered", samples.TS + 11),
            samples.failed(OUT2, 131026, "Message undeliverable", ts=samples.TS + 12),
        ]
    )
    answer = await post(client, batch)
    assert (answer["statuses"], answer["failed"]) == (2, 1)
    async with database(db_url) as conn:
        states = await conn.fetch(
            "SELECT provider_message_id, delivery_status, delivery_error FROM messages"
            " WHERE direction = 'outbound' ORDER BY provider_message_id"
        )
        stored = await conn.fetchval("SELECT count(*) FROM provider_statuses")
        flagged = await conn.fetchval("SELECT whatsapp_undeliverable_at FROM leads")
        (failed,) = await events(conn, "whatsapp.item_failed")
    assert [(r["provider_message_id"], r["delivery_status"]) for r in states] == [
        (OUT, "delivered"),
        (OUT2, "failed"),
    ]
    assert states[1]["delivery_error"].startswith("131026")
    assert stored == 2 and flagged is not None
    assert (failed["kind"], failed["status"]) == ("status", "delivered")
    assert unindexable.startswith(failed["wamid"]) and "index row size" in failed["reason"]


async def test_a_kept_event_the_database_refuses_does_not_cost_the_others_or_the_answer(
    client, db_url
):
    """An unknown message type carrying `1e999` (read as infinity, which jsonb cannot hold) is
    kept with its content as text, the other kept items of the delivery are kept as they are,
    the text beside them is filed, and the answer is 200 (it was 422 and nothing was kept)."""
    batch = samples.messages(
        [
            samples.text("wamid.ok", PHONE, "Kya price hai?"),
            samples.base("wamid.huge", PHONE, "hologram", hologram={"depth": "__HUGE__"}),
            samples.future_kind("wamid.future", PHONE),
        ]
    )
    account = samples.envelope({"event": "VERIFIED_ACCOUNT"}, field="account_update")
    batch["entry"][0]["changes"] += account["entry"][0]["changes"]
    body = json.dumps(batch, separators=(",", ":")).replace('"__HUGE__"', "1e999").encode()
    assert b'"depth":1e999' in body
    response = await client.post(
        "/webhooks/whatsapp",
        content=body,
        headers={"content-type": "application/json", "x-hub-signature-256": signature(body)},
    )
    assert response.status_code == 200, response.text
    assert (response.json()["messages"], response.json()["skipped"]) == (1, 3)
    async with database(db_url) as conn:
        bodies = await conn.fetch("SELECT body FROM messages")
        recorded = await events(conn, "whatsapp.item_recorded")
    assert [r["body"] for r in bodies] == ["Kya price hai?"]
    (as_text,) = [r for r in recorded if "unstorable" in r]
    as_they_came = [(r["kind"], r["item"]) for r in recorded if "unstorable" not in r]
    assert as_they_came == [
        ("message.hologram", samples.future_kind("wamid.future", PHONE)),
        ("account_update", account["entry"][0]["changes"][0]["value"]),
    ]
    assert as_text["kind"] == "message.hologram"
    assert "InvalidTextRepresentation" in as_text["unstorable"]
    assert '"wamid.huge"' in as_text["item"] and '"depth": Infinity' in as_text["item"]
