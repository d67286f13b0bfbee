"""Sequences in one process against real NATS and PostgreSQL: ingest's API, the scheduler's
step handler, timers and stop reactors, and dispatch's policies and channels (the log channel,
or email through a real SMTP server). Waits are compressed by short durations, or a parked run
is made due at once; tests wait for observable states, never for the clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from aiosmtpd.controller import Controller

from shvya_common.bus import Unit
from shvya_common.contracts import SendParams, SequenceStepParams
from shvya_common.embedded import free_port
from shvya_common.links import open_pixel_url, unsubscribe_url
from shvya_common.sequences.enrolments import job_key
from shvya_common.settings import CommonSettings
from tests.integration.sequence_support import Rig, sequence_rig, step_outcomes
from tests.keys import bearer, make_key
from tests.support import eventually

pytestmark = pytest.mark.integration

THREE_STEPS = [
    {"key": "hello", "kind": "send", "text": "Hi {{ lead.first_name }}, welcome to Acme Solar!"},
    {"key": "pause", "kind": "wait", "seconds": 1},
    {"key": "again", "kind": "send", "text": "{{ lead.first_name }}, any questions for us?"},
]
LONG_WAIT = [
    {"key": "hello", "kind": "send", "text": "Hi {{ lead.first_name }}!"},
    {"key": "later", "kind": "wait", "seconds": 3600},
    {"key": "again", "kind": "send", "text": "Checking in, {{ lead.first_name }}."},
]


def _zone_at(local_hour: int) -> str:
    """An Etc/GMT zone where it is now `local_hour` o'clock (the hour, give or take minutes)."""
    offset = (local_hour - datetime.now(UTC).hour + 12) % 24 - 12
    if offset == 0:
        return "Etc/GMT"
    # POSIX-style names: Etc/GMT-5 is five hours ahead of UTC.
    return f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


async def _enrol_one(rig: Rig, sequence: dict, lead: uuid.UUID) -> str:
    enrolled = await rig.enrol(sequence["id"], lead_id=str(lead))
    assert enrolled["enrolled"] == 1, enrolled
    return str(enrolled["enrolments"][0]["enrolment_id"])


async def _first_send_left(rig: Rig, lead: uuid.UUID) -> None:
    await eventually(
        lambda: rig.outbound(lead), lambda rows: rows and rows[0]["status"] in ("logged", "sent")
    )


async def _logged(rig: Rig) -> list[dict]:
    return rig.logged()


async def _events(rig: Rig, lead: uuid.UUID, prefix: str = "sequence.") -> list[str]:
    rows = await rig.pool.fetch(
        "SELECT type FROM events WHERE lead_id = $1 AND type LIKE $2 || '%' ORDER BY created_at",
        lead,
        prefix,
    )
    return [r["type"] for r in rows]


async def test_three_step_sequence_sends_twice_through_dispatch_and_completes(
    plat, base_env, tmp_path
):
    """Send, wait, send: both personalised texts leave through dispatch as P2 marketing sends
    with per-run send keys, and the enrolment completes with its history and events."""
    async with sequence_rig(plat, base_env, tmp_path) as rig:
        lead = await rig.lead()
        sequence = await rig.create_sequence(channel="log", steps=THREE_STEPS)
        assert [s["key"] for s in sequence["steps"]] == ["hello", "pause", "again"]
        enrolment = await _enrol_one(rig, sequence, lead)
        done = await rig.wait_for(sequence["id"], enrolment, lambda d: d["status"] == "completed")
        assert step_outcomes(done) == [
            ("hello", "requested"),
            ("pause", "waiting"),
            ("again", "requested"),
        ]
        assert [h["kind"] for h in done["history"]] == [
            "enrolled",
            "step",
            "step",
            "step",
            "completed",
        ]
        assert all(h["step_version"] == 1 for h in done["history"] if h["kind"] == "step")
        sent = await eventually(
            lambda: rig.outbound(lead), lambda rows: [r["status"] for r in rows] == ["logged"] * 2
        )
        assert [r["body"] for r in sent] == [
            "Hi Asha, welcome to Acme Solar!",
            "Asha, any questions for us?",
        ]
        steps = {s["key"]: s["id"] for s in sequence["steps"]}
        assert [r["send_key"] for r in sent] == [
            f"sequence:{enrolment}:{steps['hello']}:0",
            f"sequence:{enrolment}:{steps['again']}:1",
        ]
        assert {(r["priority"], r["meta"]["purpose"]) for r in sent} == {(70, "marketing")}
        assert [line["text"] for line in rig.logged()] == [r["body"] for r in sent]
        assert sorted(await _events(rig, lead)) == [
            "sequence.completed",
            "sequence.enrolled",
            "sequence.step_executed",
            "sequence.step_executed",
            "sequence.step_executed",
        ]
        counts = await rig.api("GET", f"/sequences/{sequence['id']}")
        assert counts["enrolments"] == {"completed": 1}


async def test_a_reply_on_any_channel_stops_the_rest_of_the_sequence(plat, base_env, tmp_path):
    """A reply after the first send stops the enrolment through the feed's reactor, cancelling
    its parked run, and even a stray copy of that run's job sends nothing."""
    async with sequence_rig(plat, base_env, tmp_path) as rig:
        lead = await rig.lead(phone="+15550002")
        sequence = await rig.create_sequence(channel="log", steps=LONG_WAIT)
        enrolment = await _enrol_one(rig, sequence, lead)
        await rig.history_is(sequence["id"], enrolment, lambda s: ("later", "waiting") in s)
        await _first_send_left(rig, lead)
        await rig.reply("+15550002", "Actually, call me tomorrow")
        stopped = await rig.wait_for(sequence["id"], enrolment, lambda d: d["status"] == "stopped")
        assert stopped["stop_reason"] == "replied"
        assert stopped["history"][-1]["detail"]["channel"] == "whatsapp_cloud"
        timer = await rig.pool.fetchval(
            "SELECT status FROM timers WHERE idempotency_key = $1", job_key(uuid.UUID(enrolment), 1)
        )
        assert timer == "cancelled"
        # A copy of the parked run's job (a timer that fired anyway) is stale and does nothing.
        async with plat.bus.unit() as unit:
            await unit.enqueue_job(
                "sequence.step",
                SequenceStepParams(enrolment_id=uuid.UUID(enrolment), run=1),
                "stray-copy",
            )
        job = await eventually(
            lambda: rig.pool.fetchrow(
                "SELECT status, result FROM jobs WHERE idempotency_key = 'stray-copy'"
            ),
            lambda row: row is not None and row["status"] == "completed",
        )
        assert job["result"]["skipped"]
        assert [r["body"] for r in await rig.outbound(lead) if r["send_key"]] == ["Hi Asha!"]
        assert "sequence.stopped" in await _events(rig, lead)


async def test_a_reply_that_races_a_step_is_caught_when_the_step_runs(plat, base_env, tmp_path):
    """An inbound message the reactors have not seen yet still stops the enrolment, because
    the step handler checks for replies itself before it sends."""
    async with sequence_rig(plat, base_env, tmp_path) as rig:
        lead = await rig.lead(phone="+15550003")
        sequence = await rig.create_sequence(channel="log", steps=LONG_WAIT)
        enrolment = await _enrol_one(rig, sequence, lead)
        await rig.history_is(sequence["id"], enrolment, lambda s: ("later", "waiting") in s)
        await _first_send_left(rig, lead)
        # Filed without an event, as if the feed had not reached it yet.
        await rig.pool.execute(
            "INSERT INTO messages (company_id, lead_id, direction, channel, body)"
            " VALUES ($1, $2, 'inbound', 'email', 'Stop emailing, I will call you')",
            rig.company_id,
            lead,
        )
        assert await rig.fast_forward(enrolment) == 1
        stopped = await rig.wait_for(sequence["id"], enrolment, lambda d: d["status"] == "stopped")
        assert stopped["stop_reason"] == "replied"
        assert stopped["history"][-1]["detail"] == {"seen": "at run time"}
        assert len(await rig.outbound(lead)) == 1


async def test_pause_until_the_conversation_is_quiet_then_resume(plat, base_env, tmp_path):
    """With on_reply 'pause', a reply pauses the enrolment, which resumes where it was once the
    conversation has been quiet for the sequence's period, and then finishes every step."""
    async with sequence_rig(plat, base_env, tmp_path) as rig:
        lead = await rig.lead(phone="+15550004")
        sequence = await rig.create_sequence(
            channel="log",
            on_reply="pause",
            resume_after_quiet_seconds=2,
            steps=LONG_WAIT,
        )
        enrolment = await _enrol_one(rig, sequence, lead)
        await rig.history_is(sequence["id"], enrolment, lambda s: ("later", "waiting") in s)
        await _first_send_left(rig, lead)
        await rig.reply("+15550004", "Tell me about batteries first")
        paused = await rig.wait_for(sequence["id"], enrolment, lambda d: d["status"] == "paused")
        assert paused["paused_at"] is not None
        assert paused["current_step"]["key"] == "again"
        # Resumed after the quiet period: the step it waited for is still an hour away.
        resumed = await rig.wait_for(sequence["id"], enrolment, lambda d: d["status"] == "active")
        kinds = [h["kind"] for h in resumed["history"]]
        assert kinds[-2:] == ["paused", "resumed"]
        assert resumed["next_run_at"] == paused["next_run_at"]
        await rig.fast_forward(enrolment)
        done = await rig.wait_for(sequence["id"], enrolment, lambda d: d["status"] == "completed")
        assert step_outcomes(done)[-1] == ("again", "requested")
        events = await _events(rig, lead)
        assert events.index("sequence.paused") < events.index("sequence.resumed")


async def test_a_condition_branches_on_whether_the_email_was_opened(plat, base_env, tmp_path):
    """email_opened holds for the lead a person opened the sequence's email for (through the
    real tracking pixel) and not for the one whose only open came from an image proxy."""
    async with sequence_rig(plat, base_env, tmp_path) as rig:
        sequence = await rig.create_sequence(
            channel="email",
            steps=[
                {"key": "offer", "kind": "send", "text": "Our summer offer, {{ lead.first_name }}"},
                {"key": "wait", "kind": "wait", "seconds": 3600},
                {
                    "key": "opened",
                    "kind": "condition",
                    "condition": {"type": "email_opened"},
                    "then": "thanks",
                    "else": "next",
                },
                {"key": "nudge", "kind": "send", "text": "Did you see our offer?"},
                {"kind": "end"},
                {"key": "thanks", "kind": "move_stage", "stage": "Qualified"},
            ],
        )
        reader = await rig.lead(phone=None, email="reader@example.com", timezone=_zone_at(12))
        proxied = await rig.lead(phone=None, email="proxied@example.com", timezone=_zone_at(12))
        enrolments = {}
        for lead in (reader, proxied):
            enrolments[lead] = await _enrol_one(rig, sequence, lead)
            await rig.history_is(
                sequence["id"], enrolments[lead], lambda s: ("wait", "waiting") in s
            )
        settings = CommonSettings(**{k.lower(): v for k, v in base_env.items()})
        for lead, agent in (
            (reader, "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 Version/17.0 Safari/605.1"),
            (proxied, "Mozilla/5.0 (Windows NT 5.1) (via ggpht.com GoogleImageProxy)"),
        ):
            [message] = await rig.outbound(lead)
            pixel = open_pixel_url(settings, message["id"]).split("://", 1)[1].split("/", 1)[1]
            response = await rig.client.get(f"/{pixel}", headers={"User-Agent": agent})
            assert response.status_code == 200
            await rig.fast_forward(enrolments[lead])
        for lead, expected in ((reader, "true"), (proxied, "false")):
            done = await rig.wait_for(
                sequence["id"], enrolments[lead], lambda d: d["status"] == "completed"
            )
            assert ("opened", expected) in step_outcomes(done)
        reader_steps = [
            k for k, _ in step_outcomes(await rig.enrolment(sequence["id"], enrolments[reader]))
        ]
        assert reader_steps == ["offer", "wait", "opened", "thanks"]
        proxied_steps = [
            k for k, _ in step_outcomes(await rig.enrolment(sequence["id"], enrolments[proxied]))
        ]
        assert proxied_steps == ["offer", "wait", "opened", "nudge", "step-5"]
        stage = await rig.pool.fetchval(
            "SELECT s.name FROM leads l JOIN stages s ON s.id = l.stage_id WHERE l.id = $1", reader
        )
        assert stage == "Qualified"
        assert "lead.stage_changed" in await _events(rig, reader, "lead.")


class Mailbox:
    """An aiosmtpd handler that keeps each message it accepts."""

    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append((list(envelope.rcpt_tos), envelope.original_content or b""))
        return "250 2.0.0 queued"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


async def test_quiet_hours_defer_an_email_step_which_then_goes_once(plat, base_env, tmp_path, smtp):
    """An email step at night in the lead's zone is deferred by dispatch and reaches the SMTP
    server exactly once when sending is allowed, unless the lead replies first, which cancels
    it."""
    mailbox, port = smtp
    email = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none"}
    email["smtp_from"] = "sales@acme.example"
    async with sequence_rig(plat, base_env, tmp_path, dispatch=email) as rig:
        night = _zone_at(3)
        sequence = await rig.create_sequence(channel="email", steps=LONG_WAIT)
        sleeper = await rig.lead(phone=None, email="sleeper@example.com", timezone=night)
        talker = await rig.lead(phone="+15550005", email="talker@example.com", timezone=night)
        enrolled = {lead: await _enrol_one(rig, sequence, lead) for lead in (sleeper, talker)}
        for lead in (sleeper, talker):
            await rig.history_is(
                sequence["id"], enrolled[lead], lambda s: ("later", "waiting") in s
            )
            [deferred] = await eventually(
                lambda lead=lead: rig.outbound(lead),
                lambda rows: rows and rows[0]["status"] == "scheduled",
            )
            assert "quiet hours" in deferred["meta"]["deferred_reason"]
        assert mailbox.received == []
        # The talker writes in: its enrolment stops and its waiting email is cancelled.
        await rig.reply("+15550005", "Please call instead")
        await rig.wait_for(sequence["id"], enrolled[talker], lambda d: d["status"] == "stopped")
        [cancelled] = await rig.outbound(talker)
        assert cancelled["status"] == "cancelled"
        # Morning comes for the sleeper: it is daytime in its zone and the parked send is due.
        await rig.pool.execute(
            "UPDATE leads SET timezone = $2 WHERE id = $1", sleeper, _zone_at(12)
        )
        await rig.pool.execute(
            "UPDATE timers SET due_at = now() WHERE status = 'pending' AND kind = 'resume'"
        )
        [sent] = await eventually(
            lambda: rig.outbound(sleeper), lambda rows: rows and rows[0]["status"] == "sent"
        )
        await eventually(lambda: _count(mailbox), lambda n: n == 1)
        # The same send requested again (a retried step) is the same message: nothing new goes.
        async with plat.bus.unit() as unit:
            params = await _send_params(unit, sent["id"])
            _, created = await unit.request_send(params, priority=70)
        assert not created
        await rig.pool.execute(
            "UPDATE timers SET due_at = now() WHERE status = 'pending' AND kind = 'resume'"
        )
        assert [rcpt for rcpt, _ in mailbox.received] == [["sleeper@example.com"]]
        assert b"Hi Asha!" in mailbox.received[0][1]
        assert (await rig.outbound(talker))[0]["status"] == "cancelled"


async def _count(mailbox: Mailbox) -> int:
    return len(mailbox.received)


async def _send_params(unit: Unit, message_id: uuid.UUID) -> SendParams:
    raw = await unit.conn.fetchval("SELECT send_params FROM messages WHERE id = $1", message_id)
    return SendParams.model_validate(raw)


async def test_editing_a_sequence_moves_waiting_leads_and_records_versions(
    plat, base_env, tmp_path
):
    """Removing the step two leads wait for moves them to the next one with their due time,
    and a changed step runs at its new version while the history keeps the old one."""
    async with sequence_rig(plat, base_env, tmp_path) as rig:
        sequence = await rig.create_sequence(
            channel="log",
            steps=[
                {"key": "a", "kind": "send", "text": "First, {{ lead.first_name }}"},
                {"key": "w1", "kind": "wait", "seconds": 3600},
                {"key": "b", "kind": "send", "text": "Second"},
                {"key": "w2", "kind": "wait", "seconds": 3600},
                {"key": "c", "kind": "send", "text": "Third"},
            ],
        )
        leads = [await rig.lead(phone=f"+1555001{n}") for n in range(2)]
        enrolled = [await _enrol_one(rig, sequence, lead) for lead in leads]
        before = []
        for enrolment in enrolled:
            before.append(
                await rig.history_is(sequence["id"], enrolment, lambda s: ("w1", "waiting") in s)
            )
            assert before[-1]["current_step"]["key"] == "b"
        by_key = {s["key"]: s for s in sequence["steps"]}
        edited = [
            {**by_key["a"], "text": "Hello again, {{ lead.first_name }}"},
            by_key["w1"],
            by_key["w2"],
            {"key": "c", "kind": "send", "text": "Third, reworded"},
        ]
        result = await rig.api("PUT", f"/sequences/{sequence['id']}/steps", {"steps": edited})
        assert sorted(m["enrolment_id"] for m in result["moved"]) == sorted(enrolled)
        assert {(m["from_step"], m["to_step"]) for m in result["moved"]} == {("b", "w2")}
        versions = {s["key"]: s["version"] for s in result["sequence"]["steps"]}
        assert versions == {"a": 2, "w1": 1, "w2": 1, "c": 2}
        assert result["sequence"]["version"] == 2
        assert {s["key"]: s["id"] for s in result["sequence"]["steps"]}["c"] == by_key["c"]["id"]
        for enrolment, old in zip(enrolled, before, strict=True):
            moved = await rig.enrolment(sequence["id"], enrolment)
            assert moved["current_step"]["key"] == "w2"
            assert moved["next_run_at"] == old["next_run_at"]
            assert moved["history"][-1]["kind"] == "moved"
            await rig.fast_forward(enrolment)
            await rig.history_is(sequence["id"], enrolment, lambda s: ("w2", "waiting") in s)
            await rig.fast_forward(enrolment)
            done = await rig.wait_for(
                sequence["id"], enrolment, lambda d: d["status"] == "completed"
            )
            runs = [
                (h["step_key"], h["step_version"]) for h in done["history"] if h["kind"] == "step"
            ]
            assert runs == [("a", 1), ("w1", 1), ("w2", 1), ("c", 2)]
        lines = await eventually(lambda: _logged(rig), lambda found: len(found) == 4)
        texts = sorted(line["text"] for line in lines)
        assert texts == ["First, Asha", "First, Asha", "Third, reworded", "Third, reworded"]


async def test_one_optout_across_channels(plat, base_env, tmp_path):
    """A WhatsApp STOP or an email unsubscribe ends the lead's enrolments and, with the company
    setting on (the default), suppresses marketing to all of its addresses, while with it off
    only the enrolments stop."""
    async with sequence_rig(plat, base_env, tmp_path) as rig:
        assert await rig.api("GET", "/optout-settings") == {"across_channels": True}
        sequence = await rig.create_sequence(channel="email", steps=LONG_WAIT)
        day = _zone_at(12)
        first = await rig.lead(phone="+15550021", email="first@example.com", timezone=day)
        second = await rig.lead(phone="+15550022", email="second@example.com", timezone=day)
        enrolled = {}
        for lead in (first, second):
            enrolled[lead] = await _enrol_one(rig, sequence, lead)
            await rig.history_is(
                sequence["id"], enrolled[lead], lambda s: ("later", "waiting") in s
            )
        await rig.reply("+15550021", "STOP")
        stopped = await rig.wait_for(
            sequence["id"], enrolled[first], lambda d: d["status"] == "stopped"
        )
        assert stopped["stop_reason"] == "opted_out"
        suppressions = await eventually(
            lambda: rig.pool.fetch(
                "SELECT channel, address, scope, reason FROM suppressions ORDER BY channel, address"
            ),
            lambda rows: len(rows) == 3,
        )
        assert [tuple(r) for r in suppressions] == [
            ("all", "+15550021", "marketing", "optout_across_channels"),
            ("all", "first@example.com", "marketing", "optout_across_channels"),
            ("whatsapp_cloud", "+15550021", "all", "optout_keyword"),
        ]
        # Dispatch now refuses marketing email to that address (a campaign, another sequence).
        async with plat.bus.unit() as unit:
            message_id, _ = await unit.request_send(
                SendParams(
                    company_id=rig.company_id,
                    lead_id=first,
                    channel="email",
                    to="first@example.com",
                    text="Big sale!",
                    send_key="campaign:first",
                    purpose="marketing",
                ),
                priority=60,
            )
        row = await eventually(
            lambda: rig.pool.fetchrow("SELECT status FROM messages WHERE id = $1", message_id),
            lambda r: r["status"] not in ("queued", "retrying"),
        )
        assert row["status"] == "suppressed"
        # With the setting off, an opt-out stops the lead's enrolments and suppresses no more.
        await rig.api("PUT", "/optout-settings", {"across_channels": False})
        await rig.reply("+15550022", "stop")
        stopped = await rig.wait_for(
            sequence["id"], enrolled[second], lambda d: d["status"] == "stopped"
        )
        assert stopped["stop_reason"] == "opted_out"
        await eventually(
            lambda: rig.pool.fetchval("SELECT count(*) FROM event_feed"), lambda n: n == 0
        )
        assert not await rig.pool.fetchval(
            "SELECT count(*) FROM suppressions WHERE address = 'second@example.com'"
        )
        # Back on: an email unsubscribe (RFC 8058 one-click) also ends WhatsApp marketing.
        await rig.api("PUT", "/optout-settings", {"across_channels": True})
        third = await rig.lead(phone="+15550023", email="third@example.com", timezone=day)
        enrolment = await _enrol_one(rig, sequence, third)
        await rig.history_is(sequence["id"], enrolment, lambda s: ("later", "waiting") in s)
        settings = CommonSettings(**{k.lower(): v for k, v in base_env.items()})
        path = unsubscribe_url(settings, rig.company_id, "third@example.com").split("/u/", 1)[1]
        response = await rig.client.post(f"/u/{path}", content=b"List-Unsubscribe=One-Click")
        assert response.status_code == 200
        stopped = await rig.wait_for(sequence["id"], enrolment, lambda d: d["status"] == "stopped")
        assert stopped["stop_reason"] == "unsubscribed"
        await eventually(
            lambda: rig.pool.fetch(
                "SELECT channel, scope FROM suppressions WHERE address = '+15550023'"
            ),
            lambda rows: [tuple(r) for r in rows] == [("all", "marketing")],
        )


async def test_enrolment_by_list_and_filter_at_most_once_and_never_suppressed(
    plat, base_env, tmp_path
):
    """A filter selects leads by stage, attribute and last activity, and a lead already in the
    sequence (which the database itself enforces) or suppressed is counted, not enrolled."""
    async with sequence_rig(plat, base_env, tmp_path) as rig:
        sequence = await rig.create_sequence(
            channel="log", steps=[{"kind": "wait", "seconds": 3600}, {"kind": "end"}]
        )
        solar = await rig.lead(phone="+15550031", attributes={"interest": "solar"})
        await rig.lead(phone="+15550032", attributes={"interest": "wind"})
        qualified = await rig.lead(phone="+15550033", stage="Qualified")
        suppressed = await rig.lead(phone="+15550034", attributes={"interest": "solar"})
        await rig.pool.execute(
            "INSERT INTO suppressions (company_id, channel, address, scope, reason)"
            " VALUES ($1, 'whatsapp_cloud', '+15550034', 'all', 'optout_keyword')",
            rig.company_id,
        )
        by_attribute = await rig.enrol(sequence["id"], filter={"attributes": {"interest": "solar"}})
        assert [e["lead_id"] for e in by_attribute["enrolments"]] == [str(solar)]
        assert by_attribute["suppressed_lead_ids"] == [str(suppressed)]
        by_stage = await rig.enrol(sequence["id"], filter={"stage": "qualified"})
        assert [e["lead_id"] for e in by_stage["enrolments"]] == [str(qualified)]
        future = datetime(2100, 1, 1, tzinfo=UTC).isoformat()
        inactive = await rig.enrol(sequence["id"], filter={"last_activity_before": future})
        assert inactive["enrolled"] == 1  # the wind lead; the others are in already or suppressed
        again = await rig.enrol(sequence["id"], lead_ids=[str(solar), str(qualified)])
        assert again["enrolled"] == 0 and again["already_enrolled"] == 2
        with pytest.raises(Exception, match="sequence_enrolments_one_live"):
            await rig.pool.execute(
                "INSERT INTO sequence_enrolments (company_id, sequence_id, lead_id, source)"
                " VALUES ($1, $2, $3, 'lead')",
                rig.company_id,
                uuid.UUID(sequence["id"]),
                solar,
            )
        listed = await rig.api("GET", f"/sequences/{sequence['id']}/enrolments?status=active")
        assert listed["total"] == 3
        mine = await rig.api("GET", f"/leads/{solar}/enrolments")
        assert [e["sequence_id"] for e in mine] == [sequence["id"]]
        # After a stop, the lead may be enrolled again.
        enrolment = by_attribute["enrolments"][0]["enrolment_id"]
        await rig.api("POST", f"/sequences/{sequence['id']}/enrolments/{enrolment}/stop")
        assert (await rig.enrol(sequence["id"], lead_id=str(solar)))["enrolled"] == 1


async def test_the_api_refuses_what_cannot_run_with_a_reason(plat, base_env, tmp_path):
    """Bad steps get a 422 with the reason, another company's ids a 404 and an archived
    sequence a 409, and archiving stops the sequence's enrolments."""
    async with sequence_rig(plat, base_env, tmp_path) as rig:
        bad = {
            "loop": [
                {"key": "a", "kind": "send", "text": "x"},
                {"kind": "condition", "condition": {"type": "replied"}, "else": "a"},
            ],
            "unknown target": [
                {"kind": "condition", "condition": {"type": "replied"}, "then": "nowhere"}
            ],
            "stage": [{"kind": "move_stage", "stage": "Moon"}],
            "template": [{"kind": "send", "template_id": str(uuid.uuid4())}],
            "jinja": [{"kind": "send", "text": "Hi {{ lead.first_name "}],
            "empty wait": [{"kind": "wait"}],
            "duplicate keys": [{"key": "k", "kind": "end"}, {"key": "k", "kind": "end"}],
        }
        reasons = {}
        for name, steps in bad.items():
            response = await rig.client.post(
                f"{rig.base}/sequences", json={"name": name, "channel": "log", "steps": steps}
            )
            assert response.status_code == 422, (name, response.text)
            reasons[name] = str(response.json()["detail"])
        assert "loop without a wait step" in reasons["loop"]
        assert "nowhere" in reasons["unknown target"]
        assert "Moon" in reasons["stage"]
        other = await rig.pool.fetchval(
            "INSERT INTO companies (name) VALUES ('Other') RETURNING id"
        )
        sequence = await rig.create_sequence(channel="log", steps=[{"kind": "wait", "seconds": 60}])
        other_lead = await rig.pool.fetchval(
            "INSERT INTO leads (company_id, phone_e164) VALUES ($1, '+15559999') RETURNING id",
            other,
        )
        theirs = bearer(await make_key(rig.pool, other))
        for method, path, body, headers in (
            ("GET", f"{rig.base}/sequences/{sequence['id']}", None, theirs),
            (
                "POST",
                f"{rig.base}/sequences/{sequence['id']}/enrolments",
                {"lead_id": str(other_lead)},
                None,
            ),
            ("GET", f"{rig.base}/sequences/{uuid.uuid4()}", None, None),
        ):
            response = await rig.client.request(method, path, json=body, headers=headers)
            assert response.status_code == 404, (path, response.text)
        unauthorised = await rig.client.get(f"{rig.base}/sequences", headers={"Authorization": ""})
        assert unauthorised.status_code == 401
        lead = await rig.lead(phone="+15550041")
        await rig.enrol(sequence["id"], lead_id=str(lead))
        archived = await rig.api("POST", f"/sequences/{sequence['id']}/archive")
        assert archived["archived_at"] is not None and archived["enrolments"] == {"stopped": 1}
        response = await rig.client.post(
            f"{rig.base}/sequences/{sequence['id']}/enrolments", json={"lead_id": str(lead)}
        )
        assert response.status_code == 409
        listed = await rig.api("GET", "/sequences")
        assert listed["total"] == 0
        assert (await rig.api("GET", "/sequences?archived=true"))["total"] == 1


async def test_one_step_edits_and_a_preview_for_a_lead(plat, base_env, tmp_path):
    """A step can be changed or removed on its own (its version counts the change), and a
    preview renders each send for a lead or says which field it lacks."""
    async with sequence_rig(plat, base_env, tmp_path) as rig:
        sequence = await rig.create_sequence(
            channel="email",
            steps=[
                {"key": "hi", "kind": "send", "text": "Hi {{ lead.first_name }}"},
                {"key": "w", "kind": "wait", "seconds": 60},
                {"key": "plan", "kind": "send", "text": "Your {{ lead.plan }} plan"},
            ],
        )
        steps = {s["key"]: s["id"] for s in sequence["steps"]}
        path = f"/sequences/{sequence['id']}/steps"
        changed = await rig.api("PATCH", f"{path}/{steps['w']}", {"seconds": 120})
        wait = next(s for s in changed["sequence"]["steps"] if s["key"] == "w")
        assert (wait["seconds"], wait["version"]) == (120, 2)
        swapped = await rig.api("PATCH", f"{path}/{steps['w']}", {"kind": "end"})
        assert [s["kind"] for s in swapped["sequence"]["steps"]] == ["send", "end", "send"]
        bad = await rig.client.patch(f"{rig.base}{path}/{steps['w']}", json={"seconds": -1})
        assert bad.status_code == 422
        removed = await rig.api("DELETE", f"{path}/{steps['w']}")
        assert [s["key"] for s in removed["sequence"]["steps"]] == ["hi", "plan"]
        gone = await rig.client.delete(f"{rig.base}{path}/{steps['w']}")
        assert gone.status_code == 404
        lead = await rig.lead(phone=None, email="pat@example.com", name="Pat Lee")
        preview = await rig.api(
            "POST", f"/sequences/{sequence['id']}/preview", {"lead_id": str(lead)}
        )
        assert [(p["key"], p["text"], p["to"]) for p in preview] == [
            ("hi", "Hi Pat", "pat@example.com"),
            ("plan", None, "pat@example.com"),
        ]
        assert "plan" in preview[1]["error"]
        await rig.api("PATCH", f"/sequences/{sequence['id']}", {"on_reply": "pause"})
        final = await rig.api("GET", f"/sequences/{sequence['id']}")
        assert final["on_reply"] == "pause" and final["version"] == 5


async def test_a_patch_cannot_null_a_field_the_sequence_needs(plat, base_env, tmp_path):
    """PATCH with null for name, channel, on_reply or resume_after_quiet_seconds is a 422 and
    the sequence is unchanged (a null quiet time was a 500)."""
    async with sequence_rig(plat, base_env, tmp_path) as rig:
        sequence = await rig.create_sequence(channel="log", steps=[{"kind": "wait", "seconds": 60}])
        path = f"{rig.base}/sequences/{sequence['id']}"
        for field in ("name", "channel", "on_reply", "resume_after_quiet_seconds"):
            response = await rig.client.patch(path, json={"on_reply": "stop", field: None})
            assert response.status_code == 422, (field, response.text)
            assert "cannot be null" in response.text
        after = await rig.api("GET", f"/sequences/{sequence['id']}")
        assert after["version"] == sequence["version"]
        assert after["resume_after_quiet_seconds"] == sequence["resume_after_quiet_seconds"]
