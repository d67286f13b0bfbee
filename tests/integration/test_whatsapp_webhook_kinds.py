"""Every kind of WhatsApp Cloud notification through ingest's webhook, in-process against real
NATS and PostgreSQL, with payloads in Meta's documented format (tests/meta_samples.py)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests import meta_samples as samples
from tests.integration.webhook_support import (
    database,
    events,
    ingest_client,
    jobs_in_stream,
    signature,
)
from tests.integration.webhook_support import post_accepted as post

pytestmark = pytest.mark.integration

PHONE = "16505551234"
E164 = "+16505551234"
OUT = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI1RjQyNUE3NEYxMzAzMzQ5MkEA"


@pytest.fixture
async def client(base_env):
    async with ingest_client(base_env) as c:
        yield c


async def outbound(conn, wamid=OUT, body="Yes, in blue.", **meta):
    """An outbound WhatsApp message dispatch has sent to the first lead (it carries a wamid)."""
    company, lead = await conn.fetchrow(
        "SELECT company_id, id FROM leads ORDER BY created_at LIMIT 1"
    )
    return await conn.fetchval(
        "INSERT INTO messages (company_id, lead_id, direction, channel, body, status,"
        " provider_message_id, recipient, send_key, priority, meta)"
        " VALUES ($1, $2, 'outbound', 'whatsapp_cloud', $3, 'sent', $4, $5, $6, 100, $7)"
        " RETURNING id",
        company,
        lead,
        body,
        wamid,
        E164,
        f"reply:{uuid.uuid4()}",
        {"purpose": "reply", **meta},
    )


async def test_mixed_batch_of_text_edit_username_sender_and_unknown_type_is_all_handled(
    client, db_url, nats_url, prefix
):
    """One delivery with a valid text, an edit of an earlier message, a username-only (BSUID)
    sender and a type Meta may add later: each is handled on its own and the answer is 200."""
    await post(client, samples.messages([samples.text("wamid.first", PHONE, "Is it in blue?")]))
    batch = samples.messages(
        [
            samples.text("wamid.new", "919876543210", "Kya price hai?"),
            samples.edit("wamid.edit", PHONE, "wamid.first", "Is it in green?"),
            samples.text("wamid.bsuid", None, "Hello from my username", from_user_id=samples.BSUID),
            samples.future_kind("wamid.future", PHONE),
        ],
        [
            samples.contact("919876543210", "Asha Rao"),
            samples.contact(PHONE, "Sheena Nelson"),
            samples.contact(None, "Neo", samples.BSUID, username="@neo"),
        ],
    )
    answer = await post(client, batch)
    assert (answer["messages"], answer["changes"], answer["skipped"], answer["failed"]) == (
        2,
        1,
        1,
        0,
    )
    async with database(db_url) as conn:
        inbound = await conn.fetch(
            "SELECT m.provider_message_id, m.body, l.phone_e164, l.wa_user_id, l.wa_username"
            " FROM messages m JOIN leads l ON l.id = m.lead_id ORDER BY m.created_at"
        )
        revisions = await conn.fetch("SELECT previous_body, new_body FROM message_revisions")
        recorded = await events(conn, "whatsapp.item_recorded")
        jobs = await conn.fetchval("SELECT count(*) FROM jobs WHERE task_name = 'ai.engage'")
    assert [(r["provider_message_id"], r["body"]) for r in inbound] == [
        ("wamid.first", "Is it in green?"),
        ("wamid.new", "Kya price hai?"),
        ("wamid.bsuid", "Hello from my username"),
    ]
    assert (inbound[2]["phone_e164"], inbound[2]["wa_user_id"], inbound[2]["wa_username"]) == (
        None,
        samples.BSUID,
        "@neo",
    )
    assert [(r["previous_body"], r["new_body"]) for r in revisions] == [
        ("Is it in blue?", "Is it in green?")
    ]
    assert recorded[0]["kind"] == "message.hologram"
    # Three messages to answer; the edit started no reply of its own.
    assert jobs == 3
    await jobs_in_stream(nats_url, prefix, lambda c: c == {"ai.engage": 3})


async def test_only_bad_signatures_and_non_json_are_refused(client):
    """A body that is not JSON (or not an object) is 400; other objects are not refused."""
    for body, status in ((b"{not json", 400), (b"[1, 2]", 400), (b'{"object": "page"}', 200)):
        response = await client.post(
            "/webhooks/whatsapp",
            content=body,
            headers={"content-type": "application/json", "x-hub-signature-256": signature(body)},
        )
        assert response.status_code == status, response.text
    odd = {"object": "whatsapp_business_account", "entry": [{"changes": ["nope", {"value": 3}]}]}
    assert (await post(client, odd))["skipped"] == 2


async def test_edits_keep_history_and_answer_again_only_when_the_company_says_so(client, db_url):
    """An edit updates the text and keeps the old one; a company with whatsapp_edits=reply gets
    one new ai.engage for an edit of a message already answered, a retry adds nothing."""
    await post(client, samples.messages([samples.text("wamid.q", PHONE, "Price for 2 kW?")]))
    async with database(db_url) as conn:
        message_id = await conn.fetchval("SELECT id FROM messages")
        await conn.execute(
            'UPDATE companies SET settings = settings || \'{"whatsapp_edits": "reply"}\''
        )
        await outbound(conn, send_key=None)
        await conn.execute(
            "UPDATE messages SET send_key = 'reply:' || $1::text WHERE direction = 'outbound'",
            str(message_id),
        )
    edit = samples.messages([samples.edit("wamid.qe", PHONE, "wamid.q", "Price for 3 kW?")])
    for _ in range(2):
        await post(client, edit)
    async with database(db_url) as conn:
        row = await conn.fetchrow(
            "SELECT body, edited_at, meta FROM messages WHERE id = $1", message_id
        )
        jobs = await conn.fetch(
            "SELECT task_params, idempotency_key FROM jobs WHERE task_name = 'ai.engage'"
            " ORDER BY created_at"
        )
        edited = await events(conn, "message.edited")
        inbound = await conn.fetchval("SELECT count(*) FROM messages WHERE direction = 'inbound'")
    assert row["body"] == "Price for 3 kW?" and row["edited_at"] is not None
    assert row["meta"]["edit_count"] == 1
    assert [j["task_params"].get("revision") for j in jobs] == [None, 1]
    assert len(edited) == 1 and inbound == 1


async def test_deletion_marks_the_original_and_hides_its_text(client, db_url):
    """A revoke marks the message deleted, keeps its text as a revision and files nothing."""
    await post(client, samples.messages([samples.text("wamid.d", PHONE, "my card is 4111...")]))
    await post(client, samples.messages([samples.revoke("wamid.dv", PHONE, "wamid.d")]))
    async with database(db_url) as conn:
        row = await conn.fetchrow("SELECT body, deleted_at, meta FROM messages")
        kept = await conn.fetchval(
            "SELECT previous_body FROM message_revisions WHERE kind = 'revoke'"
        )
        count = await conn.fetchval("SELECT count(*) FROM messages")
    assert row["deleted_at"] is not None and row["meta"]["deleted"] is True
    assert row["body"] == "[Message deleted by the customer]"
    assert kept == "my card is 4111..." and count == 1


async def test_reactions_attach_to_our_message_replace_and_remove(client, db_url):
    """A reaction to our message is attached to it; a later one replaces it, an empty one
    removes it; none is an inbound message."""
    await post(client, samples.messages([samples.text("wamid.hi", PHONE, "Hi")]))
    async with database(db_url) as conn:
        out_id = await outbound(conn)
    for wamid, emoji, ts in (("wamid.r1", "👍", 1), ("wamid.r2", "❤️", 2), ("wamid.r3", None, 3)):
        message = samples.reaction(wamid, PHONE, OUT, emoji)
        message["timestamp"] = str(samples.TS + ts)
        await post(client, samples.messages([message]))
        async with database(db_url) as conn:
            found = await conn.fetchrow(
                "SELECT emoji, reactor FROM message_reactions WHERE message_id = $1", out_id
            )
        assert (found["emoji"], found["reactor"]) == (emoji, E164)
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE direction = 'inbound'") == 1


async def test_structured_replies_are_filed_with_payloads_and_readable_text(client, db_url):
    """Button, list, flow, quick-reply, order, location and contact messages keep their
    structured payloads in meta and give the AI a readable text."""
    await post(
        client,
        samples.messages(
            [
                samples.button_reply("wamid.i1", PHONE, "wamid.menu"),
                samples.list_reply("wamid.i2", PHONE),
                samples.flow_reply("wamid.i3", PHONE),
                samples.quick_reply("wamid.i4", PHONE),
                samples.order("wamid.i5", PHONE),
                samples.location("wamid.i6", PHONE),
                samples.contacts_card("wamid.i7", PHONE),
            ]
        ),
    )
    async with database(db_url) as conn:
        rows = {
            r["provider_message_id"]: r
            for r in await conn.fetch("SELECT provider_message_id, body, meta FROM messages")
        }
    assert rows["wamid.i1"]["meta"]["interactive"]["id"] == "plan-gold"
    assert rows["wamid.i2"]["meta"]["interactive"]["id"] == "slot-3"
    assert rows["wamid.i3"]["meta"]["interactive"]["response"]["city"] == "Pune"
    assert rows["wamid.i4"]["meta"]["button"]["payload"] == "STOP_PROMOS"
    assert rows["wamid.i5"]["meta"]["order"]["catalog_id"] == "194836987003835"
    assert rows["wamid.i6"]["meta"]["location"]["longitude"] == -122.148981
    assert rows["wamid.i7"]["meta"]["contacts"][0]["org"]["company"] == "Example, Inc."
    assert rows["wamid.i1"]["body"] == "Gold plan"
    assert rows["wamid.i5"]["body"].startswith("[Order from catalog: 2 × di9ozbzfi4")


async def test_media_is_queued_for_download_once(client, db_url, nats_url, prefix):
    """A media message gets an inbound_media row and one media.fetch job, however often sent."""
    payload = samples.messages([samples.image("wamid.img", PHONE, "1055", "Crack on panel")])
    for _ in range(2):
        await post(client, payload)
    async with database(db_url) as conn:
        media = await conn.fetch(
            "SELECT media_id, kind, declared_mime_type, status FROM inbound_media"
        )
        body = await conn.fetchval("SELECT body FROM messages")
    assert [tuple(r) for r in media] == [("1055", "image", "image/jpeg", "pending")]
    assert body == "[Image attached: image/jpeg] Crack on panel"
    await jobs_in_stream(nats_url, prefix, lambda c: c == {"ai.engage": 1, "media.fetch": 1})


async def test_ad_referral_is_kept_on_the_lead_and_group_messages_keep_their_group(client, db_url):
    """A click-to-WhatsApp referral becomes the lead's first attribution (kept when later ads
    come); a group message is filed with its group id."""
    await post(client, samples.messages([samples.referral_text("wamid.ad1", PHONE, "Is it on?")]))
    second = samples.referral_text("wamid.ad2", PHONE, "Again")
    second["referral"]["source_id"] = "other-ad"
    await post(client, samples.messages([second]))
    await post(client, samples.messages([samples.text("wamid.g", PHONE, "hi all", group_id="G7")]))
    async with database(db_url) as conn:
        attribution = await conn.fetchval("SELECT attribution FROM leads")
        group = await conn.fetchval(
            "SELECT meta->>'group_id' FROM messages WHERE provider_message_id = 'wamid.g'"
        )
        attributed = await events(conn, "lead.attributed")
    assert attribution["source_id"] == "120226305854810726" and len(attributed) == 1
    assert group == "G7"


async def test_stop_typed_in_a_group_is_no_opt_out_and_gets_no_private_answer(client, db_url):
    """A member writes STOP in a WhatsApp group the business is in: the message is filed with
    its group, the member is not suppressed and gets no opt-out confirmation in private; the
    same word in the private chat is an opt-out."""
    await post(client, samples.messages([samples.text("wamid.gs", PHONE, "STOP", group_id="G7")]))
    async with database(db_url) as conn:
        assert (
            await conn.fetchval(
                "SELECT meta->>'group_id' FROM messages WHERE provider_message_id = 'wamid.gs'"
            )
            == "G7"
        )
        assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0
        assert (
            await conn.fetchval("SELECT count(*) FROM messages WHERE direction = 'outbound'") == 0
        )
    await post(client, samples.messages([samples.text("wamid.ps", PHONE, "STOP")]))
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM suppressions") >= 1


async def test_a_person_known_by_bsuid_and_by_phone_keeps_one_lead(client, db_url):
    """A username user first seen by BSUID, later with a phone number too, is one lead; two
    leads found to be the same person are merged with their messages."""
    await post(
        client,
        samples.messages([samples.text("wamid.u1", None, "hi", from_user_id=samples.BSUID)]),
    )
    async with database(db_url) as conn:
        other = await conn.fetchval(
            "INSERT INTO leads (company_id, phone_e164, contact_name)"
            " SELECT company_id, '+16505557777', 'Old record' FROM leads RETURNING id"
        )
    both = samples.text("wamid.u2", "16505557777", "it's me", from_user_id=samples.BSUID)
    await post(
        client,
        samples.messages([both], [samples.contact("16505557777", "Neo", samples.BSUID)]),
    )
    async with database(db_url) as conn:
        leads = await conn.fetch("SELECT id, phone_e164, wa_user_id, contact_name FROM leads")
        owners = await conn.fetch("SELECT DISTINCT lead_id FROM messages")
        merged = await events(conn, "lead.merged")
    assert [(r["phone_e164"], r["wa_user_id"]) for r in leads] == [("+16505557777", samples.BSUID)]
    assert leads[0]["id"] == other and [r["lead_id"] for r in owners] == [other]
    assert merged[0]["kept"] == str(other)


async def test_number_and_user_id_changes_follow_the_person(client, db_url):
    """user_changed_number moves the lead to the new number (with an event, once); a BSUID
    change (system message or user_id_update) moves its business-scoped user id."""
    first = samples.text("wamid.n1", PHONE, "hello", from_user_id=samples.BSUID)
    await post(client, samples.messages([first]))
    change = samples.messages([samples.number_changed("wamid.sys1", PHONE, "16505559999")])
    for _ in range(2):
        await post(client, change)
    new_id = "US.99999999999999999999"
    await post(client, samples.user_id_update("16505559999", samples.BSUID, new_id))
    async with database(db_url) as conn:
        lead = await conn.fetchrow("SELECT phone_e164, wa_user_id FROM leads")
        numbers = await events(conn, "lead.number_changed")
        ids = await events(conn, "lead.user_id_changed")
        count = await conn.fetchval("SELECT count(*) FROM messages")
    assert (lead["phone_e164"], lead["wa_user_id"]) == ("+16505559999", new_id)
    assert [(e["old_phone"], e["new_phone"]) for e in numbers] == [(E164, "+16505559999")]
    assert ids[0]["new_user_id"] == new_id and count == 1


async def test_marketing_stop_preference_suppresses_marketing_and_resume_lifts_it(client, db_url):
    """user_preferences 'stop' suppresses marketing sends to the number, once; 'resume' lifts it."""
    await post(client, samples.messages([samples.text("wamid.p", PHONE, "Hi")]))
    for _ in range(2):
        await post(client, samples.preference(PHONE, "stop"))
    async with database(db_url) as conn:
        rows = await conn.fetch("SELECT channel, address, scope FROM suppressions")
        assert [tuple(r) for r in rows] == [("whatsapp_cloud", E164, "marketing")]
        assert len(await events(conn, "lead.marketing_opt_out")) == 1
    await post(client, samples.preference(PHONE, "resume"))
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0
        assert len(await events(conn, "lead.marketing_resumed")) == 1


async def test_window_failure_requests_the_fallback_template_once(client, db_url, nats_url, prefix):
    """A failed status with 131047 requests the company's fallback template for that message
    (once, however often Meta repeats the status)."""
    await post(client, samples.messages([samples.text("wamid.w", PHONE, "Hi")]))
    async with database(db_url) as conn:
        message_id = await outbound(conn)
        company = await conn.fetchval("SELECT company_id FROM leads")
        template = await conn.fetchval(
            "INSERT INTO templates (company_id, name, channel, language, body, variables)"
            " VALUES ($1, 'reengage', 'whatsapp_cloud', 'en_US', 'Hi {{1}}', '[\"first_name\"]')"
            " RETURNING id",
            company,
        )
        await conn.execute(
            'UPDATE companies SET settings = settings || \'{"whatsapp_fallback_template":'
            ' "reengage"}\''
        )
    failed = samples.statuses([samples.failed(OUT, 131047, "Re-engagement message")])
    for _ in range(2):
        await post(client, failed)
    async with database(db_url) as conn:
        sends = await conn.fetch(
            "SELECT send_key, status, body FROM messages WHERE send_key LIKE 'fallback:%'"
        )
        requested = await events(conn, "message.fallback_requested")
    assert [r["send_key"] for r in sends] == [f"fallback:{message_id}"]
    assert requested[0]["template"] == "reengage" and len(requested) == 1
    await jobs_in_stream(nats_url, prefix, lambda c: c.get("dispatch.send") == 1)
    params = await _send_params(nats_url, prefix)
    assert params[0]["template_id"] == str(template)


async def _send_params(nats_url, prefix):
    import nats

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(f"{prefix}.jobs.*.dispatch.send.*", durable=None)
        msgs = await sub.fetch(10, timeout=2)
        return [json.loads(m.data)["params"] for m in msgs]
    finally:
        await nc.close()


async def test_window_failure_without_a_fallback_holds_the_message(client, db_url):
    """Without a fallback template a 131047 failure is held: recorded, nothing resent."""
    await post(client, samples.messages([samples.text("wamid.w", PHONE, "Hi")]))
    async with database(db_url) as conn:
        await outbound(conn)
    await post(client, samples.statuses([samples.failed(OUT, 131047, "Re-engagement message")]))
    async with database(db_url) as conn:
        held = await events(conn, "message.held")
        sends = await conn.fetchval("SELECT count(*) FROM messages WHERE direction = 'outbound'")
    assert "no fallback template" in held[0]["reason"] and sends == 1


async def test_marketing_opt_out_failure_suppresses_marketing(client, db_url):
    """A failed status with 131050 suppresses the recipient for marketing."""
    await post(client, samples.messages([samples.text("wamid.m", PHONE, "Hi")]))
    async with database(db_url) as conn:
        await outbound(conn)
    await post(client, samples.statuses([samples.failed(OUT, 131050, "User stopped marketing")]))
    async with database(db_url) as conn:
        rows = await conn.fetch("SELECT address, scope FROM suppressions")
    assert [tuple(r) for r in rows] == [(E164, "marketing")]


async def test_ecosystem_limit_failure_is_resent_no_sooner_than_a_day_later(
    client, db_url, nats_url, prefix
):
    """A failed status with 131049 requests the same message again with not_before 24 h after
    the failure, once."""
    await post(client, samples.messages([samples.text("wamid.e", PHONE, "Hi")]))
    async with database(db_url) as conn:
        message_id = await outbound(conn, body="Our offer ends Friday")
    failed = samples.failed(OUT, 131049, "This message was not delivered", ts=samples.TS + 60)
    for _ in range(2):
        await post(client, samples.statuses([failed]))
    async with database(db_url) as conn:
        resend = await conn.fetchrow(
            "SELECT send_key, body, status FROM messages WHERE send_key LIKE 'resend:%'"
        )
    assert resend["send_key"] == f"resend:1:{message_id}"
    assert resend["body"] == "Our offer ends Friday" and resend["status"] == "queued"
    (params,) = await _send_params(nats_url, prefix)
    not_before = datetime.fromisoformat(params["not_before"])
    assert not_before == datetime.fromtimestamp(samples.TS + 60, UTC) + timedelta(hours=24)


@pytest.mark.parametrize("together", [False, True], ids=["later", "same-delivery"])
async def test_a_failed_status_after_delivered_or_read_sends_nothing_again(
    client, db_url, together
):
    """Meta's statuses arrive out of order; a 131049 'failed' for a message the phone already
    reported delivered and read (in an earlier delivery, or in the same one) is recorded, and
    the message is not resent: the customer has it."""
    await post(client, samples.messages([samples.text("wamid.d1", PHONE, "Hi")]))
    async with database(db_url) as conn:
        await outbound(conn, body="Our offer ends Friday")
    seen = [
        samples.status(OUT, "delivered", samples.TS + 10),
        samples.status(OUT, "read", samples.TS + 20),
    ]
    failed = samples.failed(OUT, 131049, "This message was not delivered", ts=samples.TS + 30)
    if together:
        await post(client, samples.statuses([failed, *seen]))
    else:
        await post(client, samples.statuses(seen))
        await post(client, samples.statuses([failed]))
    async with database(db_url) as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM messages WHERE direction = 'outbound'") == 1
        )
        assert (
            await conn.fetchval(
                "SELECT delivery_status FROM messages WHERE provider_message_id = $1", OUT
            )
            == "read"
        )
        assert len(await events(conn, "message.delivery_failed")) == 1
        assert await events(conn, "message.delivery_policy") == []


async def test_a_resend_is_the_send_as_it_was_asked_for(client, db_url, nats_url, prefix):
    """A 131049 resend of a template send carries its template parameters and the message it
    quoted, as the first send was asked for, not only its body and template."""
    await post(client, samples.messages([samples.text("wamid.rs", PHONE, "Hi")]))
    template_id = uuid.uuid4()
    async with database(db_url) as conn:
        message_id = await outbound(conn, body="Hi Ana, 20% off until Friday")
        company, lead = await conn.fetchrow("SELECT company_id, lead_id FROM messages LIMIT 1")
        await conn.execute(
            "UPDATE messages SET send_params = $2 WHERE id = $1",
            message_id,
            {
                "company_id": str(company),
                "lead_id": str(lead),
                "channel": "whatsapp_cloud",
                "to": E164,
                "text": "Hi Ana, 20% off until Friday",
                "template_id": str(template_id),
                "template_params": ["Ana", "20%"],
                "send_key": f"campaign:{message_id}",
                "purpose": "marketing",
                "context_message_id": "wamid.rs",
            },
        )
    failed = samples.failed(OUT, 131049, "This message was not delivered", ts=samples.TS + 60)
    await post(client, samples.statuses([failed]))
    (params,) = await _send_params(nats_url, prefix)
    assert params["send_key"] == f"resend:1:{message_id}"
    assert params["template_id"] == str(template_id)
    assert params["template_params"] == ["Ana", "20%"]
    assert (params["purpose"], params["context_message_id"]) == ("marketing", "wamid.rs")
    assert params["not_before"] is not None


async def test_undeliverable_failure_flags_the_lead_until_it_writes_again(client, db_url):
    """A failed status with 131026 flags the lead undeliverable; its next message clears it."""
    await post(client, samples.messages([samples.text("wamid.f1", PHONE, "Hi")]))
    async with database(db_url) as conn:
        await outbound(conn)
    await post(client, samples.statuses([samples.failed(OUT, 131026, "Message undeliverable")]))
    async with database(db_url) as conn:
        flagged = await conn.fetchrow(
            "SELECT whatsapp_undeliverable_at, whatsapp_undeliverable_reason FROM leads"
        )
        assert flagged["whatsapp_undeliverable_at"] is not None
        assert flagged["whatsapp_undeliverable_reason"].startswith("131026")
        assert len(await events(conn, "lead.flagged_undeliverable")) == 1
    await post(client, samples.messages([samples.text("wamid.f2", PHONE, "I'm back")]))
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT whatsapp_undeliverable_at FROM leads") is None


async def test_account_problem_in_a_status_pauses_the_channel(client, db_url):
    """A failed status with an account-level code (131042 payment) pauses the company's
    WhatsApp Cloud sends, with one channel.paused event."""
    await post(client, samples.messages([samples.text("wamid.a1", PHONE, "Hi")]))
    async with database(db_url) as conn:
        await outbound(conn)
    await post(client, samples.statuses([samples.failed(OUT, 131042, "Payment issue")]))
    async with database(db_url) as conn:
        pause = await conn.fetchrow("SELECT channel, error_code, paused_until FROM channel_pauses")
        paused = await events(conn, "channel.paused")
    assert (pause["channel"], pause["error_code"]) == ("whatsapp_cloud", 131042)
    assert pause["paused_until"] is not None and len(paused) == 1


async def test_template_status_webhook_pauses_and_reinstates_the_local_template(client, db_url):
    """message_template_status_update moves the matching local template's status (PAUSED, then
    APPROVED), with an event per change; an unknown template changes nothing."""
    await post(client, samples.messages([samples.text("wamid.t", PHONE, "Hi")]))
    async with database(db_url) as conn:
        company = await conn.fetchval("SELECT company_id FROM leads")
        await conn.execute(
            "INSERT INTO templates (company_id, name, channel, language, body)"
            " VALUES ($1, 'order_update', 'whatsapp_cloud', 'en_US', 'Your order')",
            company,
        )
    await post(client, samples.template_status("order_update", "en_US", "PAUSED", 55))
    async with database(db_url) as conn:
        row = await conn.fetchrow(
            "SELECT status, status_reason, provider_template_id FROM templates"
        )
        assert (row["status"], row["status_reason"], row["provider_template_id"]) == (
            "paused",
            "LOW_QUALITY",
            "55",
        )
    await post(client, samples.template_status("order_update", "en_US", "APPROVED", 55))
    unknown = await post(client, samples.template_status("nope", "en_US", "REJECTED", 56))
    async with database(db_url) as conn:
        assert await conn.fetchval("SELECT status FROM templates") == "approved"
        changes = await events(conn, "template.status_changed")
    assert [(c["previous"], c["status"]) for c in changes] == [
        ("approved", "paused"),
        ("paused", "approved"),
    ]
    assert unknown["skipped"] == 1


async def test_webhook_errors_and_account_fields_are_recorded(client, db_url):
    """value.errors and account notifications are kept as events and answered 200."""
    await post(client, samples.webhook_errors())
    await post(client, samples.envelope({"event": "VERIFIED_ACCOUNT"}, field="account_update"))
    async with database(db_url) as conn:
        kinds = [e["kind"] for e in await events(conn, "whatsapp.item_recorded")]
    assert kinds == ["error", "account_update"]


async def test_a_message_that_cannot_be_filed_is_recorded_and_the_rest_filed(client, db_url):
    """When the batch's filing statement fails for one message (here a database rule refuses
    it), every other message is still filed, the refused one is kept with its text and reason,
    and the answer is 200."""
    async with database(db_url) as conn:
        await conn.execute(
            "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF NEW.body = 'boom' THEN RAISE EXCEPTION 'refused by a rule'; END IF;"
            " RETURN NEW; END $$;"
            " CREATE TRIGGER refuse_boom BEFORE INSERT ON messages FOR EACH ROW"
            " EXECUTE FUNCTION refuse_boom()"
        )
    batch = samples.messages(
        [
            samples.text("wamid.k1", PHONE, "first"),
            samples.text("wamid.k2", "919876543210", "boom"),
            samples.text("wamid.k3", PHONE, "third\u0000 with a NUL"),
        ]
    )
    answer = await post(client, batch)
    assert (answer["messages"], answer["failed"]) == (2, 1)
    async with database(db_url) as conn:
        bodies = [r["body"] for r in await conn.fetch("SELECT body FROM messages ORDER BY body")]
        (failed,) = await events(conn, "whatsapp.item_failed")
    assert bodies == ["first", "third with a NUL"]
    assert (failed["wamid"], failed["text"]) == ("wamid.k2", "boom")
    assert "refused by a rule" in failed["reason"]
