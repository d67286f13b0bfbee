"""`sequence.step` (P2, 70): run an enrolment's due steps in one unit of work.

A job names an enrolment and the run it was scheduled for. The handler takes the sequence FOR
KEY SHARE (an edit waits for it, and it for an edit) and the enrolment FOR UPDATE; a job of an
older run, or of an enrolment no longer active, does nothing. Before any step it re-checks what
the stop reactors (`sequence_stops`) act on, because a reply or an opt-out can race a step: a
lead with a suppression on any of its addresses is stopped, and one who replied since the
enrolment (or its last resume) is stopped or paused, as the sequence says.

Then it runs steps from the current one until a wait, the end, or a stop:

- send: render the text (Jinja2 sandbox, StrictUndefined) and `request_send` it, purpose
  `marketing`, priority 70, send key `sequence:<enrolment>:<step>:<run>`, so a retried job
  never sends twice. Dispatch applies every policy; what it defers goes later, once. A lead
  without an address on the channel skips the step; a text naming a field the lead lacks
  stops the enrolment (`render_failed`) rather than send "Hi ,".
- wait: the next step becomes due when the wait ends, as a new run (a timer until then).
- condition: on to `then` or `else`.
- move_stage: the lead's stage is set, with a `lead.stage_changed` event.
- end, or no step left: the enrolment completes.

Every step run leaves a history row with the step's version and a `sequence.step_executed`
event. A paused enrolment's job is its quiet check: when the conversation has been quiet for
the sequence's `resume_after_quiet_seconds` it resumes (at its due step, or now if that time
has passed); otherwise it looks again when the quiet period would end.

Everything a run writes (history, events, the sends, the next job) commits together and is
published after COMMIT; a failure rolls it all back and the job retries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from shvya_common.bus import JobContext, Unit
from shvya_common.contracts import SendParams, SequenceStepParams
from shvya_common.contracts.events import EventType
from shvya_common.events import record_event
from shvya_common.render import RenderError, lead_context, render_text
from shvya_common.sequences import definitions, enrolments
from shvya_common.sequences.definitions import StoredStep
from shvya_common.sequences.enrolments import Enrolment
from shvya_common.sequences.steps import (
    END,
    NEXT,
    AttributeMatches,
    ConditionStep,
    EmailEngaged,
    EndStep,
    MoveStageStep,
    Replied,
    SendStep,
    StageIs,
    WaitStep,
    attribute_matches,
    wait_until,
    zone_named,
)
from shvya_scheduler.registry import Deps, registry
from shvya_scheduler.sequence_repository import StepRepository, lead_fields

log = structlog.get_logger(__name__)

SEND_PRIORITY = 70
PHONE_CHANNELS = ("whatsapp_cloud", "whatsapp_web")


@registry.task("sequence.step")
async def handle_step(
    params: SequenceStepParams, job: JobContext, deps: Deps
) -> dict[str, Any] | None:
    async with deps.bus.unit() as unit:
        result = await run_enrolment(unit, params)
    log.info("sequence_run", enrolment_id=str(params.enrolment_id), run=params.run, **result)
    return result


async def run_enrolment(unit: Unit, params: SequenceStepParams) -> dict[str, Any]:
    """Run one job of an enrolment inside `unit`; returns what happened."""
    conn, repo = unit.conn, StepRepository
    head = await repo.enrolment_head(conn, params.enrolment_id)
    if head is None:
        return {"skipped": "no such enrolment"}
    sequence = await definitions.get(conn, head["company_id"], head["sequence_id"], lock="share")
    enrolment = Enrolment.of(await repo.lock_enrolment(conn, params.enrolment_id))
    if enrolment.run != params.run:
        return {"skipped": "an older run", "current_run": enrolment.run}
    if enrolment.status not in enrolments.LIVE or sequence is None:
        return {"skipped": f"enrolment {enrolment.status}"}
    if sequence["archived_at"] is not None:
        await enrolments.stop(unit, [enrolment.id], "archived", {})
        return {"stopped": "archived"}
    now = datetime.now(UTC)
    if enrolment.status == "paused":
        resumed = await _quiet_check(unit, enrolment, sequence, now)
        if resumed is None:
            return {"paused": "conversation not quiet yet"}
        enrolment = resumed
        if enrolment.next_run_at is not None and enrolment.next_run_at > now:
            await _wait_for(unit, enrolment, enrolment.current_step_id, enrolment.next_run_at)
            return {"resumed": True, "next_run_at": enrolment.next_run_at.isoformat()}
    lead = await repo.lead(conn, enrolment.lead_id)
    assert lead is not None  # an enrolment goes with its lead
    if await enrolments.suppressed_leads(conn, enrolment.company_id, [enrolment.lead_id]):
        await enrolments.stop(unit, [enrolment.id], "suppressed", {"seen": "at run time"})
        return {"stopped": "suppressed"}
    if await repo.replied_since(conn, enrolment.lead_id, enrolment.replies_since):
        detail = {"seen": "at run time"}
        if sequence["on_reply"] == "pause":
            await enrolments.pause(unit, [enrolment.id], "replied", detail)
            return {"paused": "replied"}
        await enrolments.stop(unit, [enrolment.id], "replied", detail)
        return {"stopped": "replied"}
    steps = await definitions.live_steps(conn, sequence["id"])
    return await Chain(unit, enrolment, sequence, lead, steps, now).run()


async def _quiet_check(
    unit: Unit, enrolment: Enrolment, sequence: asyncpg.Record, now: datetime
) -> Enrolment | None:
    """Resume a paused enrolment if the conversation is quiet; else look again later."""
    last = await StepRepository.last_conversation_at(unit.conn, enrolment.lead_id)
    quiet = timedelta(seconds=sequence["resume_after_quiet_seconds"])
    if last is not None and last + quiet > now:
        run = await StepRepository.bump_run(unit.conn, enrolment.id)
        await enrolments.schedule(
            unit,
            enrolment.id,
            run,
            company_id=enrolment.company_id,
            lead_id=enrolment.lead_id,
            at=last + quiet,
        )
        return None
    resumed = Enrolment.of(await StepRepository.resume(unit.conn, enrolment.id))
    await enrolments.history(unit.conn, resumed.id, resumed.run, "resumed", outcome="quiet")
    await record_event(
        unit.conn,
        resumed.company_id,
        resumed.lead_id,
        EventType.SEQUENCE_RESUMED,
        {"sequence_id": str(resumed.sequence_id), "enrolment_id": str(resumed.id)},
    )
    return resumed


async def _wait_for(
    unit: Unit, enrolment: Enrolment, step_id: uuid.UUID | None, due: datetime
) -> None:
    run = await StepRepository.advance(unit.conn, enrolment.id, step_id, due)
    await enrolments.schedule(
        unit, enrolment.id, run, company_id=enrolment.company_id, lead_id=enrolment.lead_id, at=due
    )


@dataclass(frozen=True)
class Outcome:
    outcome: str
    # Where to go next: an index into the steps, or None for the end.
    next_index: int | None
    detail: dict[str, Any]
    message_id: uuid.UUID | None = None


class StopRun(Exception):
    """A step found the enrolment cannot go on (a text that does not render)."""

    def __init__(self, reason: str, detail: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class Chain:
    """One run of an enrolment: its steps from the current one until a wait or the end."""

    def __init__(
        self,
        unit: Unit,
        enrolment: Enrolment,
        sequence: asyncpg.Record,
        lead: asyncpg.Record,
        steps: list[StoredStep],
        now: datetime,
    ) -> None:
        self.unit = unit
        self.conn = unit.conn
        self.enrolment = enrolment
        self.sequence = sequence
        self.lead = lead
        self.steps = steps
        self.now = now
        self.index = {s.id: n for n, s in enumerate(steps)}
        self.keys = {s.key: n for n, s in enumerate(steps)}
        lead_row, company = lead_fields(lead)
        self.context = lead_context(lead_row, company)

    async def run(self) -> dict[str, Any]:
        e = self.enrolment
        position = self.index.get(e.current_step_id) if e.current_step_id is not None else None
        if e.current_step_id is not None and position is None:
            # Edits move enrolments off the steps they remove, under the sequence's lock.
            await enrolments.stop(self.unit, [e.id], "step_missing", {})
            return {"stopped": "step_missing"}
        ran: list[str] = []
        seen: set[int] = set()
        while position is not None and position < len(self.steps):
            if position in seen:  # refused at save time; a guard against a tight loop
                await enrolments.stop(self.unit, [e.id], "loop", {"steps": ran})
                return {"stopped": "loop", "steps": ran}
            seen.add(position)
            stored = self.steps[position]
            if isinstance(stored.step, WaitStep):
                due = wait_until(stored.step, self.now, self._zone())
                if due > self.now:
                    after = self._step_id(position + 1)
                    await self._record(stored, Outcome("waiting", None, {"until": due.isoformat()}))
                    await _wait_for(self.unit, e, after, due)
                    ran.append(stored.key)
                    return {"steps": ran, "next_run_at": due.isoformat()}
                outcome = Outcome("elapsed", position + 1, {})
            else:
                try:
                    outcome = await self._execute(stored, position)
                except StopRun as stop:
                    await enrolments.stop(self.unit, [e.id], stop.reason, stop.detail)
                    return {"steps": ran, "stopped": stop.reason}
            await self._record(stored, outcome)
            ran.append(stored.key)
            position = outcome.next_index
        await StepRepository.complete(self.conn, e.id)
        await enrolments.history(self.conn, e.id, e.run, "completed")
        await record_event(
            self.conn,
            e.company_id,
            e.lead_id,
            EventType.SEQUENCE_COMPLETED,
            {"sequence_id": str(e.sequence_id), "enrolment_id": str(e.id)},
        )
        return {"steps": ran, "completed": True}

    def _step_id(self, position: int) -> uuid.UUID | None:
        return self.steps[position].id if 0 <= position < len(self.steps) else None

    def _zone(self) -> Any:
        return zone_named(self.lead["timezone"], self.lead["company_timezone"])

    async def _record(self, stored: StoredStep, outcome: Outcome) -> None:
        e = self.enrolment
        await enrolments.history(
            self.conn,
            e.id,
            e.run,
            "step",
            step=stored.ref,
            outcome=outcome.outcome,
            detail=outcome.detail,
            message_id=outcome.message_id,
        )
        payload: dict[str, Any] = {
            "sequence_id": str(e.sequence_id),
            "enrolment_id": str(e.id),
            "step_id": str(stored.id),
            "step_key": stored.key,
            "step_version": stored.version,
            "kind": stored.step.kind,
            "outcome": outcome.outcome,
            "run": e.run,
        }
        if outcome.message_id is not None:
            payload["message_id"] = str(outcome.message_id)
        await record_event(
            self.conn, e.company_id, e.lead_id, EventType.SEQUENCE_STEP_EXECUTED, payload
        )

    async def _execute(self, stored: StoredStep, position: int) -> Outcome:
        step = stored.step
        if isinstance(step, SendStep):
            return await self._send(stored, step, position)
        if isinstance(step, ConditionStep):
            holds = await self._holds(step)
            target = step.then if holds else step.else_
            return Outcome(
                "true" if holds else "false",
                self._target(position, target),
                {"branch": target, "condition": step.condition.type},
            )
        if isinstance(step, MoveStageStep):
            return await self._move_stage(step, position)
        assert isinstance(step, EndStep)
        return Outcome("end", None, {})

    def _target(self, position: int, target: str) -> int | None:
        if target == NEXT:
            return position + 1
        if target == END:
            return None
        return self.keys.get(target, position + 1)

    async def _send(self, stored: StoredStep, step: SendStep, position: int) -> Outcome:
        e, lead = self.enrolment, self.lead
        channel = step.channel or self.sequence["channel"]
        if channel == "email":
            to = lead["email"]
        elif channel in PHONE_CHANNELS:
            to = lead["phone_e164"]
        else:
            to = lead["phone_e164"] or lead["email"]
        if not to:
            what = "an email address" if channel == "email" else "a phone number"
            return Outcome("skipped", position + 1, {"reason": f"the lead has no {what}"})
        text = step.text
        if step.template_id is not None and text is None:
            template = await StepRepository.template(self.conn, e.company_id, step.template_id)
            if template is None:
                return Outcome("skipped", position + 1, {"reason": "its template was deleted"})
            # WhatsApp bodies use {{1}}-style parameters, which dispatch fills; others are Jinja2.
            text = template["body"]
            if channel not in PHONE_CHANNELS:
                text = self._render(stored, text)
        elif text is not None:
            text = self._render(stored, text)
        if not text:
            return Outcome("skipped", position + 1, {"reason": "nothing to send"})
        params = SendParams(
            company_id=e.company_id,
            lead_id=e.lead_id,
            channel=channel,
            to=to,
            text=text,
            template_id=step.template_id,
            template_params=[self._render(stored, p) for p in step.template_params],
            send_key=enrolments.send_key(e.id, stored.id, e.run),
            purpose="marketing",
        )
        message_id, created = await self.unit.request_send(params, priority=SEND_PRIORITY)
        outcome = "requested" if created else "already requested"
        return Outcome(outcome, position + 1, {"channel": channel}, message_id)

    def _render(self, stored: StoredStep, source: str) -> str:
        try:
            return render_text(source, self.context)
        except RenderError as err:
            raise StopRun("render_failed", {"step": stored.key, "error": str(err)}) from err

    async def _holds(self, step: ConditionStep) -> bool:
        condition, e = step.condition, self.enrolment
        if isinstance(condition, Replied):
            return await StepRepository.replied_since(self.conn, e.lead_id, e.enrolled_at)
        if isinstance(condition, StageIs):
            same = (self.lead["stage"] or "").casefold() == condition.stage.casefold()
            return same if condition.type == "stage_is" else not same
        if isinstance(condition, AttributeMatches):
            return attribute_matches(condition, self.lead["attributes"] or {})
        assert isinstance(condition, EmailEngaged)
        kind = (
            EventType.EMAIL_OPENED if condition.type == "email_opened" else EventType.EMAIL_CLICKED
        )
        return await StepRepository.email_engaged(
            self.conn, e.id, e.lead_id, kind, condition.include_machine
        )

    async def _move_stage(self, step: MoveStageStep, position: int) -> Outcome:
        lead = self.lead
        stage = await StepRepository.find_stage(
            self.conn, lead["company_id"], step.stage, lead["pipeline_id"]
        )
        if stage is None:
            reason = f"no stage named {step.stage!r} in the lead's pipeline"
            return Outcome("skipped", position + 1, {"reason": reason})
        changed = await StepRepository.set_stage(
            self.conn, lead["id"], stage["id"], stage["pipeline_id"]
        )
        if changed:
            e = self.enrolment
            await record_event(
                self.conn,
                e.company_id,
                e.lead_id,
                EventType.LEAD_STAGE_CHANGED,
                {
                    "from_stage_id": str(lead["stage_id"]) if lead["stage_id"] else None,
                    "from_stage": lead["stage"],
                    "stage_id": str(stage["id"]),
                    "stage": stage["name"],
                    "pipeline_id": str(stage["pipeline_id"]),
                    "source": "sequence",
                    "sequence_id": str(e.sequence_id),
                    "enrolment_id": str(e.id),
                },
            )
        return Outcome("moved" if changed else "unchanged", position + 1, {"stage": stage["name"]})
