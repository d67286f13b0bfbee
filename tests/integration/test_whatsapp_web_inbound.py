"""What a linked WhatsApp Web account receives, filed end to end: the fake WhatsApp Web in real
Chromium → the channel's bridge → dispatch's account supervisor (its `whatsapp_web.inbound`
jobs) → ingest's worker (in-process, real NATS and PostgreSQL) → the database. Catch-up after a
reconnect, captions, replies, reactions, edits, deletions, and a send whose outcome was unknown
confirmed by WhatsApp's late acknowledgement. The supervisor is driven tick by tick; every wait
is for a state the database or a metric shows, with a deadline."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from shvya_common.contracts import JobEnvelope
from shvya_dispatch.app import build_deps
from tests.integration import test_whatsapp_web_health as health
from tests.integration.dispatch_support import Dispatcher, queue_send
from tests.integration.webhook_support import ingest_client
from tests.support import eventually

pytestmark = pytest.mark.integration
ACCOUNT = "default"
LEAD = "+15550103001"
CHAT = "15550103001@c.us"


@dataclass
class Web(health.Web):
    """The health tests' account, with a dispatcher sending through it."""

    dispatcher: Dispatcher

    async def sent_once(
        self,
        message_id: uuid.UUID,
        params: Any,
        company_id: uuid.UUID,
        lead_id: uuid.UUID,
        enqueued_at: Any,
    ) -> None:
        """The page got the send once, and a redelivery of its job would not run it again."""
        assert self.dispatcher.deps is not None
        claim = await self.dispatcher.deps.sends.claim(
            JobEnvelope(
                job_id=message_id,
                task="dispatch.send",
                priority=100,
                params=params.model_dump(mode="json"),
                company_id=company_id,
                lead_id=lead_id,
                enqueued_at=enqueued_at,
            ),
            max_attempts=6,
            lease=30.0,
            worker="test",
        )
        assert claim.action != "run", claim
        assert len([a for a in self.fake.attempts if a["digits"] == LEAD[1:]]) == 1

    async def inbound(self, provider_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            "SELECT id, lead_id, body, meta, deleted_at, edited_at FROM messages"
            " WHERE channel = 'whatsapp_web' AND direction = 'inbound'"
            " AND provider_message_id = $1",
            provider_id,
        )

    async def filed(self, provider_id: str) -> asyncpg.Record:
        row = await eventually(lambda: self.inbound(provider_id), timeout=60)
        assert row is not None
        return row

    async def count(self, sql: str, *args: Any) -> int:
        value: int = await self.pool.fetchval(sql, *args)
        return value

    async def inbound_count(self) -> int:
        return await self.count(
            "SELECT count(*) FROM messages WHERE channel = 'whatsapp_web' AND direction = 'inbound'"
        )

    async def outbound(self, lead_id: uuid.UUID, body: str) -> tuple[uuid.UUID, str]:
        """A message this account sent the lead earlier, with WhatsApp's id for it."""
        provider_id = f"true_{CHAT}_3EB0{uuid.uuid4().hex[:16].upper()}"
        message_id: uuid.UUID = await self.pool.fetchval(
            "INSERT INTO messages (company_id, lead_id, direction, channel, body, status,"
            " provider_message_id, recipient, send_key, priority, meta)"
            " SELECT company_id, id, 'outbound', 'whatsapp_web', $2, 'sent', $3, $4, $5, 100,"
            " $6 FROM leads WHERE id = $1 RETURNING id",
            lead_id,
            body,
            provider_id,
            LEAD,
            f"reply:{uuid.uuid4()}",
            {"account": ACCOUNT},
        )
        return message_id, provider_id


@pytest.fixture
async def web(
    plat: Any, base_env: dict[str, str], db_url: str, tmp_path: Path
) -> AsyncIterator[Web]:
    page = health.fake_page(
        db_url,
        tmp_path,
        policy_whatsapp_web_quiet_hours="",
        policy_whatsapp_web_min_gap_seconds=0,
        policy_whatsapp_web_jitter_seconds=0,
    )
    # The ingest app's lifespan runs the whatsapp_web.inbound worker.
    async with page as (fake, settings), ingest_client(base_env):
        dispatcher = Dispatcher(plat.pool, settings)
        dispatcher.deps = await build_deps(settings, plat.pool, dispatcher.stack, bus=plat.bus)
        supervisor = dispatcher.deps.web_accounts
        assert supervisor is not None
        try:
            yield Web(fake, supervisor.channel, supervisor, plat.pool, dispatcher)
        finally:
            await supervisor.release_all()
            await dispatcher.stack.aclose()


async def queued_messages() -> float:
    value = REGISTRY.get_sample_value(
        "shvya_whatsapp_web_inbound_total", {"kind": "message", "outcome": "queued"}
    )
    return value or 0.0


async def test_messages_that_arrived_while_the_browser_was_closed_are_filed_once(
    web: Web,
) -> None:
    """Messages a lead sent while no browser was open are filed when the account reconnects;
    seen again (another reconnect's catch-up, the same message arriving live) they are not
    filed twice, and a new message after them is filed as usual."""
    await web.open()
    await web.channel.close_session(ACCOUNT)
    away = [
        await web.fake.receive(web.fake.device(), LEAD, f"while you were away {n}", deliver=False)
        for n in range(2)
    ]
    _session, device = await web.open()
    rows = [await web.filed(provider_id) for provider_id in away]
    assert [r["body"] for r in rows] == ["while you were away 0", "while you were away 1"]
    assert rows[0]["lead_id"] == rows[1]["lead_id"]

    # Seen again: a second reconnect catches up on the same (still unread) chat...
    await web.channel.close_session(ACCOUNT)
    _session, device = await web.open()
    # ...and the first message arrives live once more, followed by a new one.
    before = await queued_messages()
    await web.fake.receive(device, LEAD, "while you were away 0", msg_id=away[0])
    fresh = await web.fake.receive(device, LEAD, "back now")
    await eventually(queued_messages, lambda n: n >= before + 2, timeout=30)
    await web.filed(fresh)
    assert await web.inbound_count() == 3
    jobs = await web.count(
        "SELECT count(*) FROM jobs WHERE task_name = 'whatsapp_web.inbound'"
        " AND task_params->>'kind' = 'message'"
    )
    assert jobs == 3
    engage = await web.count("SELECT count(*) FROM jobs WHERE task_name = 'ai.engage'")
    assert engage == 3


async def test_a_newly_linked_phone_does_not_file_its_old_chats(web: Web) -> None:
    """A phone linked today has chats from before, unread ones too: none of them is new to us,
    so the first catch-up files none (each would be filed and answered); what arrives after the
    link is filed as usual."""
    await web.open()  # linked now: the phone's chats were there before
    await web.channel.close_session(ACCOUNT)
    await web.fake.receive(
        web.fake.device(),
        LEAD,
        "unread since last week",
        t=int(time.time()) - 3 * 86400,
        deliver=False,
    )
    _session, device = await web.open()
    fresh = await web.filed(await web.fake.receive(device, LEAD, "hello, new lead here"))
    assert fresh["body"] == "hello, new lead here"
    assert await web.inbound_count() == 1
    assert await web.count("SELECT count(*) FROM jobs WHERE task_name = 'ai.engage'") == 1


async def test_a_caption_and_a_reply_are_filed_with_their_text_and_the_quoted_message(
    web: Web,
) -> None:
    """A photo with a caption is filed as its caption, labelled with what is attached (kind and
    mime type kept in meta); a reply keeps the id of the message it quotes (ours here) as its
    context."""
    _session, device = await web.open()
    hello = await web.filed(await web.fake.receive(device, LEAD, "Hi, do you have solar panels?"))
    _out_id, out_provider = await web.outbound(hello["lead_id"], "Yes! Here is our brochure.")
    photo_id = await web.fake.receive(
        device, LEAD, type="image", caption="Is this the blue one?", mimetype="image/jpeg"
    )
    reply_id = await web.fake.receive(device, LEAD, "Yes, that one please", quoted=out_provider)
    photo = await web.filed(photo_id)
    assert photo["body"] == "[Image attached: image/jpeg] Is this the blue one?"
    assert photo["meta"]["whatsapp_type"] == "image"
    assert photo["meta"]["media"] == {"kind": "image", "mime_type": "image/jpeg"}
    reply = await web.filed(reply_id)
    assert reply["body"] == "Yes, that one please"
    assert reply["meta"]["context_id"] == out_provider
    assert photo["lead_id"] == reply["lead_id"] == hello["lead_id"]


async def test_a_reaction_attaches_to_the_message_it_reacts_to(web: Web) -> None:
    """A reaction to our message is attached to that message (a later one from the lead replaces
    it) and is never filed as a message of its own."""
    _session, device = await web.open()
    hello = await web.filed(await web.fake.receive(device, LEAD, "Hi"))
    out_id, out_provider = await web.outbound(hello["lead_id"], "We open at nine.")

    async def reactions() -> list[asyncpg.Record]:
        return await web.pool.fetch(
            "SELECT emoji, reactor, lead_id FROM message_reactions WHERE message_id = $1", out_id
        )

    await web.fake.react(device, LEAD, out_provider, "👍")
    (first,) = await eventually(reactions, lambda rs: len(rs) == 1, timeout=30)
    assert (first["emoji"], first["lead_id"]) == ("👍", hello["lead_id"])
    await web.fake.react(device, LEAD, out_provider, "❤️")
    (second,) = await eventually(reactions, lambda rs: rs and rs[0]["emoji"] == "❤️", timeout=30)
    assert second["reactor"] == first["reactor"]
    assert await web.inbound_count() == 1


async def test_edits_update_the_message_keep_each_previous_text_and_file_nothing_new(
    web: Web,
) -> None:
    """Each edit of a lead's message replaces its text and keeps the previous one as a revision
    (two edits of one message are two revisions, although WhatsApp keeps the original's time
    on the message); no new inbound message and no new AI reply come of them."""
    _session, device = await web.open()
    original = await web.fake.receive(device, LEAD, "Price for 2 kW?")
    row = await web.filed(original)

    async def revisions() -> list[asyncpg.Record]:
        return await web.pool.fetch(
            "SELECT previous_body, new_body FROM message_revisions WHERE message_id = $1"
            " AND kind = 'edit' ORDER BY created_at",
            row["id"],
        )

    await web.fake.edit(device, original, "Price for 3 kW?")
    await eventually(revisions, lambda rs: len(rs) == 1, timeout=30)
    await web.fake.edit(device, original, "Price for 5 kW?")
    found = await eventually(revisions, lambda rs: len(rs) == 2, timeout=30)
    assert [(r["previous_body"], r["new_body"]) for r in found] == [
        ("Price for 2 kW?", "Price for 3 kW?"),
        ("Price for 3 kW?", "Price for 5 kW?"),
    ]
    edited = await web.inbound(original)
    assert edited is not None and edited["body"] == "Price for 5 kW?"
    assert edited["edited_at"] is not None and edited["meta"]["edit_count"] == 2
    assert await web.inbound_count() == 1
    assert await web.count("SELECT count(*) FROM jobs WHERE task_name = 'ai.engage'") == 1


async def test_a_deletion_marks_the_original_deleted_and_keeps_its_text_aside(web: Web) -> None:
    """A message the lead deletes for everyone is marked deleted (its text kept as a revision,
    not shown any more), and nothing new is filed."""
    _session, device = await web.open()
    original = await web.fake.receive(device, LEAD, "my card number is 4111 1111")
    row = await web.filed(original)
    await web.fake.revoke(device, original)
    deleted = await eventually(
        lambda: web.inbound(original), lambda r: r is not None and r["deleted_at"], timeout=30
    )
    assert deleted is not None and deleted["meta"]["deleted"] is True
    assert "4111" not in deleted["body"]
    kept = await web.pool.fetchval(
        "SELECT previous_body FROM message_revisions WHERE message_id = $1 AND kind = 'revoke'",
        row["id"],
    )
    assert kept == "my card number is 4111 1111"
    assert await web.inbound_count() == 1


async def test_a_send_of_unknown_outcome_is_confirmed_by_the_late_acknowledgement(
    web: Web,
) -> None:
    """A send WhatsApp's server did not acknowledge in time is recorded 'unknown' with the id it
    carries and not repeated; when the acknowledgement arrives later the send becomes 'sent'
    (marked a late confirmation) and its delivery and read follow, while the message still
    left exactly once and a redelivered send job does not send it again."""
    _session, device = await web.open()
    hello = await web.filed(await web.fake.receive(device, LEAD, "Can you call me?"))
    company_id, lead_id = await web.pool.fetchrow(
        "SELECT company_id, lead_id FROM messages WHERE id = $1", hello["id"]
    )
    web.fake.behaviour[LEAD[1:]] = "never"
    message_id, params = await queue_send(
        web.pool, company_id, lead_id, to=LEAD, channel="whatsapp_web", text="Calling at 4?"
    )
    outcome = await web.dispatcher.send(message_id, params)
    assert outcome["status"] == "unknown"
    row = await web.pool.fetchrow(
        "SELECT status, provider_message_id, attempts FROM messages WHERE id = $1", message_id
    )
    assert row["status"] == "unknown"
    (held,) = web.fake.held()
    assert row["provider_message_id"] == held

    async def send_row() -> asyncpg.Record:
        return await web.pool.fetchrow(
            "SELECT status, delivery_status, sent_at, meta FROM messages WHERE id = $1",
            message_id,
        )

    await web.fake.ack(device, [held], 2)
    confirmed = await eventually(
        send_row,
        lambda r: r["status"] == "sent" and r["delivery_status"] == "delivered",
        timeout=30,
    )
    assert confirmed["meta"]["late_confirmation"] is True and confirmed["sent_at"] is not None
    await web.fake.ack(device, [held], 3)
    read = await eventually(send_row, lambda r: r["delivery_status"] == "read", timeout=30)
    assert read["status"] == "sent"

    # A redelivery of the send job finds it sent: nothing goes to the page again.
    await web.sent_once(message_id, params, company_id, lead_id, confirmed["sent_at"])


async def test_an_acknowledgement_that_comes_before_the_unknown_is_recorded_confirms_the_send(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An acknowledgement that arrives after the send stopped waiting for it but before the send
    is recorded 'unknown' (the page holds it until the send has timed out and releases it just
    before the record) still confirms it: the send ends 'sent' (a late confirmation, delivery
    following), it left exactly once and a redelivered send job does not send it again."""
    _session, device = await web.open()
    hello = await web.filed(await web.fake.receive(device, LEAD, "Are you open today?"))
    company_id, lead_id = await web.pool.fetchrow(
        "SELECT company_id, lead_id FROM messages WHERE id = $1", hello["id"]
    )
    web.fake.behaviour[LEAD[1:]] = "never"
    message_id, params = await queue_send(
        web.pool, company_id, lead_id, to=LEAD, channel="whatsapp_web", text="Until six."
    )
    assert web.dispatcher.deps is not None
    sends = web.dispatcher.deps.sends
    record_unknown = sends.record_unknown

    async def ack_jobs() -> list[asyncpg.Record]:
        return await web.pool.fetch(
            "SELECT status, result FROM jobs WHERE task_name = 'whatsapp_web.inbound'"
            " AND task_params->>'kind' = 'ack'"
        )

    async def acknowledged_first(*args: Any, **kwargs: Any) -> Any:
        # The send has timed out and the page still holds it; its acknowledgement now reaches
        # ingest, which files it completely, before the send is recorded.
        (held,) = web.fake.held()
        await web.fake.ack(device, [held], 1)
        (job,) = await eventually(
            ack_jobs, lambda js: len(js) == 1 and js[0]["status"] == "completed", timeout=30
        )
        assert job["result"]["confirmed"] == 0  # nothing was 'unknown' yet
        return await record_unknown(*args, **kwargs)

    monkeypatch.setattr(sends, "record_unknown", acknowledged_first)
    outcome = await web.dispatcher.send(message_id, params)
    assert outcome["status"] == "sent"
    (held,) = web.fake.held()
    row = await web.pool.fetchrow(
        "SELECT status, provider_message_id, delivery_status, sent_at, meta FROM messages"
        " WHERE id = $1",
        message_id,
    )
    assert (row["status"], row["provider_message_id"]) == ("sent", held)
    assert row["meta"]["late_confirmation"] is True and row["sent_at"] is not None
    assert row["delivery_status"] == "sent"
    events = await web.pool.fetch(
        "SELECT type FROM events WHERE payload->>'message_id' = $1 AND type LIKE 'message.%'"
        " ORDER BY created_at",
        str(message_id),
    )
    assert [e["type"] for e in events].count("message.send_ambiguous") == 0
    assert [e["type"] for e in events].count("message.sent") == 1

    await web.fake.ack(device, [held], 2)
    await eventually(
        lambda: web.pool.fetchval("SELECT delivery_status FROM messages WHERE id = $1", message_id),
        lambda s: s == "delivered",
        timeout=30,
    )
    await web.sent_once(message_id, params, company_id, lead_id, row["sent_at"])


async def test_replies_and_reactions_in_a_privacy_id_chat_find_the_message_they_name(
    web: Web,
) -> None:
    """In a chat WhatsApp addresses by the lead's privacy id (@lid) a reply's quoted message, a
    reaction's target and an acknowledgement name a message by that id, while our message was
    sent, and the lead's earlier one filed, under the number: each finds the message it names,
    ours and the lead's, and a message filed from the @lid chat is found as it is."""
    _session, device = await web.open()
    lid = "207769815752711@lid"
    early = await web.filed(await web.fake.receive(device, LEAD, "Is the 3 kW in stock?"))
    early_id = await web.pool.fetchval(
        "SELECT provider_message_id FROM messages WHERE id = $1", early["id"]
    )
    out_id, out_provider = await web.outbound(early["lead_id"], "It is; shall I reserve one?")
    ours, theirs = (
        f"{side}_{lid}_{pid.split('_', 2)[2]}"
        for side, pid in (("true", out_provider), ("false", early_id))
    )

    to_ours = await web.filed(
        await web.fake.receive(device, LEAD, "Yes please", lid=lid, quoted=ours)
    )
    to_theirs = await web.filed(
        await web.fake.receive(device, LEAD, "the 3 kW, as I asked", lid=lid, quoted=theirs)
    )
    unknown = f"false_{lid}_3A0000NEVERSEEN"
    to_unknown = await web.filed(
        await web.fake.receive(device, LEAD, "(that one)", lid=lid, quoted=unknown)
    )
    assert to_ours["meta"]["context_id"] == out_provider
    assert to_theirs["meta"]["context_id"] == early_id
    assert to_unknown["meta"]["context_id"] == unknown  # nothing stored: as named
    assert {to_ours["lead_id"], to_theirs["lead_id"]} == {early["lead_id"]}
    reply_id = await web.pool.fetchval(
        "SELECT provider_message_id FROM messages WHERE id = $1", to_ours["id"]
    )
    again = await web.filed(
        await web.fake.receive(device, LEAD, "and soon", lid=lid, quoted=reply_id)
    )
    assert again["meta"]["context_id"] == reply_id

    async def reaction(message_id: uuid.UUID) -> str | None:
        return await web.pool.fetchval(
            "SELECT emoji FROM message_reactions WHERE message_id = $1", message_id
        )

    await web.fake.react(device, LEAD, ours, "👍", lid=lid)
    await web.fake.react(device, LEAD, theirs, "🙏", lid=lid)
    assert await eventually(lambda: reaction(out_id), timeout=30) == "👍"
    assert await eventually(lambda: reaction(early["id"]), timeout=30) == "🙏"

    await web.fake.ack(device, [ours], 3)
    await eventually(
        lambda: web.pool.fetchval("SELECT delivery_status FROM messages WHERE id = $1", out_id),
        lambda s: s == "read",
        timeout=30,
    )
    assert await web.inbound_count() == 5


@pytest.mark.parametrize("policy", [None, "reply"])
async def test_an_edit_of_an_answered_message_is_answered_again_as_the_company_says(
    web: Web, policy: str | None
) -> None:
    """The company's `whatsapp_edits` setting decides for WhatsApp Web as for WhatsApp Cloud: with
    "reply" an edit of a message already answered starts one new AI reply (its ai.engage carries
    the edit's revision), by default it starts none."""
    _session, device = await web.open()
    original = await web.fake.receive(device, LEAD, "Price for 2 kW?")
    row = await web.filed(original)
    company_id = await web.pool.fetchval("SELECT company_id FROM messages WHERE id = $1", row["id"])
    if policy is not None:
        await web.pool.execute(
            "UPDATE companies SET settings = settings"
            " || jsonb_build_object('whatsapp_edits', $2::text) WHERE id = $1",
            company_id,
            policy,
        )
    answer_id, _provider = await web.outbound(row["lead_id"], "2 kW is 1,400 EUR.")
    await web.pool.execute(
        "UPDATE messages SET send_key = 'reply:' || $1::text WHERE id = $2",
        str(row["id"]),
        answer_id,
    )

    async def edit_jobs() -> list[asyncpg.Record]:
        return await web.pool.fetch(
            "SELECT status, result FROM jobs WHERE task_name = 'whatsapp_web.inbound'"
            " AND task_params->>'kind' = 'edit'"
        )

    await web.fake.edit(device, original, "Price for 3 kW?")
    (job,) = await eventually(
        edit_jobs, lambda js: len(js) == 1 and js[0]["status"] == "completed", timeout=30
    )
    assert job["result"]["status"] == "applied"
    engage = await web.pool.fetch(
        "SELECT task_params, idempotency_key FROM jobs WHERE task_name = 'ai.engage'"
        " ORDER BY created_at"
    )
    revisions = [j["task_params"].get("revision") for j in engage]
    if policy == "reply":
        assert revisions == [None, 1]
        assert engage[1]["idempotency_key"] == f"ai.engage:{row['id']}:edit:1"
    else:
        assert revisions == [None]
    assert await web.inbound_count() == 1
