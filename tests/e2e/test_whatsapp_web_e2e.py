"""Issue 12 end to end: the four services as processes, dispatch driving Debian's Chromium
against the fake WhatsApp Web (`fake_wpp.js` injected where the real wa-js goes).

A lead writes to the linked account, the AI answers through the same account (sent on the
server's acknowledgement, then delivered and read), the lead's "STOP" suppresses them (one
confirmation, nothing after), and an account refused under WhatsApp's reach-out timelock pauses
itself: the refused send and the next one are deferred, never tried again into the
restriction, and the health probe reports the account restricted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shvya_common.contracts import SendParams
from tests.integration.fake_whatsapp_web import FAKE_WPP, FakeWhatsAppWeb, serve
from tests.support import eventually

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("WHATSAPP_WEB_CHROMIUM_PATH", "/usr/bin/chromium")
LEAD = "+15557654321"
COLD = "+15557650000"
ACCOUNT = "default"


def web_env(fake: FakeWhatsAppWeb, tmp_path: Path) -> dict[str, str]:
    return {
        "WHATSAPP_WEB_ENABLED": "true",
        "WHATSAPP_WEB_URL": fake.url,
        "WHATSAPP_WEB_CHROMIUM_PATH": CHROMIUM,
        "WHATSAPP_WEB_WA_JS_PATH": str(FAKE_WPP),
        "WHATSAPP_WEB_PROFILE_DIR": str(tmp_path / "profiles"),
        "WHATSAPP_WEB_TYPING_DELAY_MIN_MS": "1",
        "WHATSAPP_WEB_TYPING_DELAY_MAX_MS": "2",
        "WHATSAPP_WEB_SENT_TIMEOUT_SECONDS": "5",
        "WHATSAPP_WEB_SUPERVISE_SECONDS": "0.5",
        "WHATSAPP_WEB_PROBE_SECONDS": "1",
        "POLICY_WHATSAPP_WEB_MIN_GAP_SECONDS": "0",
        "POLICY_WHATSAPP_WEB_JITTER_SECONDS": "0",
        "POLICY_WHATSAPP_WEB_QUIET_HOURS": "",
        "POLICY_PAUSE_RECHECK_SECONDS": "1",
    }


async def row(pool, message_id):
    return await pool.fetchrow(
        "SELECT status, delivery_status, provider_message_id, meta, last_error, body"
        " FROM messages WHERE id = $1",
        message_id,
    )


async def test_a_linked_account_answers_stops_on_stop_and_pauses_when_restricted(
    plat, services, tmp_path
):
    """Receive → AI reply on the same account (acked, delivered, read) → STOP suppresses →
    a timelocked account pauses itself and retries nothing."""
    fake = FakeWhatsAppWeb()
    runner = await serve(fake)
    try:
        extra = web_env(fake, tmp_path)
        for name in ("ingest", "engage", "dispatch", "scheduler"):
            services.start(name, **extra)
        for proc in list(services.procs.values()):
            await proc.wait_ready()
        device = await fake.wait_device(timeout=60)
        pool = plat.pool

        async def account_state():
            return await pool.fetchrow(
                "SELECT state, owner, lease_until > now() AS leased, pause_code, pause_scope"
                " FROM whatsapp_web_accounts WHERE account = $1",
                ACCOUNT,
            )

        await eventually(account_state, lambda r: r and r["state"] == "connected", timeout=60)

        # 1. A lead writes; ingest files it; the AI answers through the same account.
        inbound_id = await fake.receive(device, LEAD, "Hi! What do you charge for a website?")

        async def reply():
            return await pool.fetchrow(
                "SELECT o.id, o.status, o.provider_message_id, o.meta, i.lead_id"
                " FROM messages i JOIN messages o ON o.reply_to_id = i.id"
                " WHERE i.provider_message_id = $1 AND i.channel = 'whatsapp_web'",
                inbound_id,
            )

        answered = await eventually(reply, lambda r: r and r["status"] == "sent", timeout=90)
        sent = await fake.wait_sent(1)
        assert sent[0]["device"] == device.id and sent[0]["digits"] == LEAD[1:]
        assert answered["provider_message_id"] == sent[0]["id"]
        assert answered["meta"]["account"] == ACCOUNT
        assert answered["meta"]["first_contact"] is False  # the lead wrote first
        inbound = await pool.fetchrow(
            "SELECT body, meta FROM messages WHERE provider_message_id = $1", inbound_id
        )
        assert inbound["body"] == "Hi! What do you charge for a website?"
        assert inbound["meta"]["account"] == ACCOUNT

        # Delivery and read acknowledgements reach the outbound message.
        await fake.ack(device, [sent[0]["id"]], 2)
        await fake.ack(device, [sent[0]["id"]], 3)
        await eventually(
            lambda: row(pool, answered["id"]), lambda r: r["delivery_status"] == "read"
        )
        # The same WhatsApp message seen twice (a catch-up after a restart) is filed once.
        await fake.receive(device, LEAD, "Hi! What do you charge for a website?", msg_id=inbound_id)

        # 2. STOP suppresses the lead on this channel: one confirmation, then nothing.
        await fake.receive(device, LEAD, "STOP")
        await eventually(
            lambda: pool.fetchval(
                "SELECT count(*) FROM suppressions WHERE address = $1 AND channel = 'whatsapp_web'",
                LEAD,
            ),
            lambda n: n >= 1,
        )
        await fake.wait_sent(2)
        confirmation = fake.sent[1]
        assert confirmation["digits"] == LEAD[1:]
        later_id = await fake.receive(device, LEAD, "are you still there?")

        async def later_reply():
            return await pool.fetchrow(
                "SELECT o.status, o.last_error FROM messages i JOIN messages o"
                " ON o.reply_to_id = i.id WHERE i.provider_message_id = $1",
                later_id,
            )

        suppressed = await eventually(
            later_reply, lambda r: r and r["status"] == "suppressed", timeout=60
        )
        assert "suppressed" in suppressed["last_error"]
        assert len(fake.sent) == 2
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM messages WHERE channel = 'whatsapp_web'"
                " AND provider_message_id = $1",
                inbound_id,
            )
            == 1
        )

        # 3. A first contact refused under the reach-out timelock pauses the account.
        fake.behaviour[COLD[1:]] = "timelock"
        lead_id = answered["lead_id"]
        company_id = await pool.fetchval("SELECT company_id FROM leads WHERE id = $1", lead_id)
        cold_lead = await pool.fetchval(
            "INSERT INTO leads (company_id, pipeline_id, stage_id, phone_e164)"
            " SELECT company_id, pipeline_id, stage_id, $2 FROM leads WHERE id = $1 RETURNING id",
            lead_id,
            COLD,
        )
        ids = []
        async with plat.bus.unit() as unit:
            for n in range(2):
                params = SendParams(
                    company_id=company_id,
                    lead_id=cold_lead,
                    channel="whatsapp_web",
                    to=COLD,
                    text=f"Hello, an offer for you ({n})",
                    send_key=f"e2e-cold:{n}",
                    purpose="marketing",
                )
                message_id, _ = await unit.request_send(params, priority=60)
                ids.append(message_id)
        paused = await eventually(account_state, lambda r: r["pause_code"] == "timelock")
        assert paused["pause_scope"] == "new_contacts"
        await fake.wait_attempts(len(fake.attempts))
        cold_attempts = [a for a in fake.attempts if a["digits"] == COLD[1:]]
        assert len(cold_attempts) == 1

        async def both_rechecked():
            rows = [await row(pool, i) for i in ids]
            return rows

        # Both sends wait (deferred, re-checked every second), and stay waiting: the refused
        # one is not tried again, the other is never tried.
        first_seen = await eventually(
            both_rechecked,
            lambda rs: all(r["status"] == "scheduled" for r in rs),
            timeout=60,
        )
        assert all("paused" in r["meta"]["deferred_reason"] for r in first_seen)
        recheck_marks = {r["meta"]["deferred_until"] for r in first_seen}
        await eventually(
            both_rechecked,
            lambda rs: {r["meta"]["deferred_until"] for r in rs}.isdisjoint(recheck_marks),
            timeout=60,
        )
        assert len([a for a in fake.attempts if a["digits"] == COLD[1:]]) == 1
        # The health probe reports it, with an event.
        await eventually(account_state, lambda r: r["state"] == "restricted")
        events = await pool.fetch(
            "SELECT type, payload FROM events WHERE type LIKE 'whatsapp_web.%' ORDER BY created_at"
        )
        types = [e["type"] for e in events]
        assert "whatsapp_web.account_paused" in types
        assert any(
            e["payload"].get("state") == "restricted"
            for e in events
            if e["type"] == "whatsapp_web.account_state"
        )
    finally:
        services.stop_all()
        await runner.cleanup()
