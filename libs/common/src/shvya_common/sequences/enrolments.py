"""Enrolments and what moves them: enrol, schedule the next run, pause, stop, and the history
and events each move leaves. Ingest's API and the scheduler (the step handler and the stop
reactors) share these, always inside a unit of work of the job bus, so a move and the job it
schedules commit together and the job is published after COMMIT.

Runs. `sequence_enrolments.run` counts an enrolment's scheduled runs. Each `sequence.step` job
carries the run it was scheduled for, under the idempotency key `sequence:<enrolment>:<run>`;
every move bumps the run, so a job or timer of an older run finds it changed and does nothing.
A move also cancels the pending timer of the run it replaces, so parked jobs do not pile up.

Stopping an enrolment also cancels the sends its steps requested that have not started to
leave (queued, retrying, or deferred by dispatch as `scheduled`): a lead who replied or opted
out gets nothing more from the sequence. A send already being sent is not touched. The move is
one the send state machine allows (`SEND_TRANSITIONS`) and dispatch's claim is fenced on the
same statuses, so a cancelled send is never sent.

Locks are always taken in one order: sequence, enrolment, timers, messages. The step handler
takes the sequence row FOR KEY SHARE and then its enrolment FOR UPDATE; edits and archiving take
the sequence FOR UPDATE and then enrolments; the reactors start at the enrolments; a stop
cancels timers before messages, as the timer loop locks them. So none of them deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from shvya_common.bus import NewJob, Unit
from shvya_common.bus.ledgers import SendLedger
from shvya_common.contracts.events import EventType
from shvya_common.contracts.jobs import SequenceStepParams
from shvya_common.events import record_events

TASK = "sequence.step"
LIVE = ["active", "paused"]
Source = Literal["lead", "list", "filter"]
ENROLMENT_COLUMNS = (
    "id, company_id, sequence_id, lead_id, status, current_step_id, run, next_run_at, source,"
    " stop_reason, enrolled_at, paused_at, resumed_at, finished_at, updated_at"
)


def job_key(enrolment_id: uuid.UUID, run: int) -> str:
    """The idempotency key of the job of one run of an enrolment."""
    return f"sequence:{enrolment_id}:{run}"


def send_key(enrolment_id: uuid.UUID, step_id: uuid.UUID, run: int) -> str:
    """The send key of a send step: one outbound message per enrolment, step and run."""
    return f"sequence:{enrolment_id}:{step_id}:{run}"


@dataclass(frozen=True)
class Enrolment:
    id: uuid.UUID
    company_id: uuid.UUID
    sequence_id: uuid.UUID
    lead_id: uuid.UUID
    status: str
    current_step_id: uuid.UUID | None
    run: int
    next_run_at: datetime | None
    enrolled_at: datetime
    paused_at: datetime | None
    resumed_at: datetime | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> Enrolment:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def replies_since(self) -> datetime:
        """Inbound messages after this moment are replies to the sequence."""
        return self.resumed_at or self.enrolled_at


@dataclass(frozen=True)
class Enrolled:
    enrolled: list[tuple[uuid.UUID, uuid.UUID]]  # (enrolment_id, lead_id)
    already: list[uuid.UUID]
    suppressed: list[uuid.UUID]


# Each lead's addresses (its phone, email and every contact address), for suppression checks.
_SUPPRESSED_LEADS = """
WITH addresses AS (
    SELECT l.id AS lead_id, lower(a.address) AS address
    FROM leads l CROSS JOIN LATERAL (VALUES (l.phone_e164), (l.email)) AS a(address)
    WHERE l.id = ANY($1::uuid[]) AND a.address IS NOT NULL
    UNION
    SELECT c.lead_id, lower(c.address) FROM lead_contacts c WHERE c.lead_id = ANY($1::uuid[])
)
SELECT DISTINCT a.lead_id FROM addresses a
JOIN suppressions s ON s.company_id = $2 AND lower(s.address) = a.address
"""

_ENROL = f"""
INSERT INTO sequence_enrolments (company_id, sequence_id, lead_id, current_step_id, next_run_at,
                                 source)
SELECT $1, $2, lead_id, $3, $4, $5 FROM unnest($6::uuid[]) AS lead_id
ON CONFLICT (sequence_id, lead_id) WHERE status IN ('active', 'paused') DO NOTHING
RETURNING {ENROLMENT_COLUMNS}
"""

_HISTORY = """
INSERT INTO sequence_history (enrolment_id, run, kind, step_id, step_key, step_version, action,
                              outcome, detail, message_id)
SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::uuid[], $5::text[], $6::int[],
                     $7::text[], $8::text[], $9::jsonb[], $10::uuid[])
"""


async def suppressed_leads(
    conn: asyncpg.Connection, company_id: uuid.UUID, lead_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """The leads with a suppression (any channel, any scope) on any of their addresses."""
    rows = await conn.fetch(_SUPPRESSED_LEADS, list(lead_ids), company_id)
    return {r["lead_id"] for r in rows}


async def history(
    conn: asyncpg.Connection,
    enrolment_id: uuid.UUID,
    run: int,
    kind: str,
    *,
    step: tuple[uuid.UUID, str, int, str] | None = None,
    outcome: str | None = None,
    detail: dict[str, Any] | None = None,
    message_id: uuid.UUID | None = None,
) -> None:
    """One history row; `step` is (id, key, version, action)."""
    await conn.execute(
        "INSERT INTO sequence_history (enrolment_id, run, kind, step_id, step_key, step_version,"
        " action, outcome, detail, message_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        enrolment_id,
        run,
        kind,
        *(step or (None, None, None, None)),
        outcome,
        detail or {},
        message_id,
    )


async def _histories(
    conn: asyncpg.Connection,
    rows: Sequence[tuple[uuid.UUID, int]],
    kind: str,
    outcome: str | None,
    detail: dict[str, Any],
) -> None:
    if rows:
        n = len(rows)
        await conn.execute(
            _HISTORY,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [kind] * n,
            [None] * n,
            [None] * n,
            [None] * n,
            [None] * n,
            [outcome] * n,
            [detail] * n,
            [None] * n,
        )


async def schedule(
    unit: Unit,
    enrolment_id: uuid.UUID,
    run: int,
    *,
    company_id: uuid.UUID,
    lead_id: uuid.UUID,
    at: datetime | None = None,
) -> None:
    """Enqueue the job of `run`, now or (in a timer) at `at`."""
    await unit.enqueue_job(
        TASK,
        SequenceStepParams(enrolment_id=enrolment_id, run=run),
        job_key(enrolment_id, run),
        company_id=company_id,
        lead_id=lead_id,
        run_at=at,
    )


async def cancel_runs(conn: asyncpg.Connection, runs: Sequence[tuple[uuid.UUID, int]]) -> None:
    """Cancel the pending timers of these (enrolment, run) jobs: they would find nothing to do."""
    if runs:
        await conn.execute(
            "UPDATE timers SET status = 'cancelled', reason = 'sequence run replaced'"
            " WHERE status = 'pending' AND idempotency_key = ANY($1::text[])",
            [job_key(e, r) for e, r in runs],
        )


async def enrol(
    unit: Unit,
    *,
    company_id: uuid.UUID,
    sequence_id: uuid.UUID,
    first_step_id: uuid.UUID,
    lead_ids: Sequence[uuid.UUID],
    source: Source,
    start_at: datetime | None = None,
) -> Enrolled:
    """Enrol leads of the company (the caller checked they are) and schedule their first run.
    A lead already in the sequence is left as it is; a suppressed lead is not enrolled."""
    wanted = list(dict.fromkeys(lead_ids))
    suppressed = await suppressed_leads(unit.conn, company_id, wanted)
    candidates = [lead for lead in wanted if lead not in suppressed]
    rows = await unit.conn.fetch(
        _ENROL, company_id, sequence_id, first_step_id, start_at, source, candidates
    )
    new = {r["lead_id"]: r["id"] for r in rows}
    await _histories(unit.conn, [(r["id"], 0) for r in rows], "enrolled", None, {"source": source})
    await record_events(
        unit.conn,
        EventType.SEQUENCE_ENROLLED,
        [
            (
                company_id,
                r["lead_id"],
                {"sequence_id": str(sequence_id), "enrolment_id": str(r["id"]), "source": source},
            )
            for r in rows
        ],
    )
    if start_at is None:
        await unit.enqueue_jobs(
            [
                NewJob(
                    TASK,
                    SequenceStepParams(enrolment_id=r["id"], run=0).model_dump(mode="json"),
                    job_key(r["id"], 0),
                    company_id=company_id,
                    lead_id=r["lead_id"],
                )
                for r in rows
            ]
        )
    else:
        for r in rows:
            await schedule(
                unit, r["id"], 0, company_id=company_id, lead_id=r["lead_id"], at=start_at
            )
    return Enrolled(
        enrolled=[(new[lead], lead) for lead in candidates if lead in new],
        already=[lead for lead in candidates if lead not in new],
        suppressed=[lead for lead in wanted if lead in suppressed],
    )


_STOP = f"""
UPDATE sequence_enrolments
   SET status = 'stopped', stop_reason = $2, finished_at = now(), next_run_at = NULL,
       paused_at = NULL, run = run + 1, updated_at = now()
 WHERE id = ANY($1::uuid[]) AND status = ANY($3::text[])
RETURNING {ENROLMENT_COLUMNS}
"""

# The sends the stopped enrolments requested that have not begun to leave: first their parked
# timers, then the messages, in the order the timer loop locks them (timer, then message), so
# the two never wait on each other.
_CANCEL_SEND_TIMERS = """
UPDATE timers t SET status = 'cancelled', reason = $2
  FROM sequence_history h
 WHERE h.enrolment_id = ANY($1::uuid[]) AND h.message_id = t.target_id
   AND t.lead_id = ANY($3::uuid[]) AND t.status = 'pending' AND t.kind = 'resume'
   AND t.ledger = 'messages'
"""
_SENDS_OF = """
SELECT DISTINCT h.message_id FROM sequence_history h
WHERE h.enrolment_id = ANY($1::uuid[]) AND h.message_id IS NOT NULL
"""


async def stop(
    unit: Unit, enrolment_ids: Sequence[uuid.UUID], reason: str, detail: dict[str, Any]
) -> list[Enrolment]:
    """Stop enrolments that are active or paused, with the reason; returns those stopped."""
    rows = await unit.conn.fetch(_STOP, list(enrolment_ids), reason, LIVE)
    if not rows:
        return []
    stopped = [Enrolment.of(r) for r in rows]
    await cancel_runs(unit.conn, [(e.id, e.run - 1) for e in stopped])
    ids, why = [e.id for e in stopped], f"sequence stopped: {reason}"
    await unit.conn.execute(_CANCEL_SEND_TIMERS, ids, why, list({e.lead_id for e in stopped}))
    sends = [r["message_id"] for r in await unit.conn.fetch(_SENDS_OF, ids)]
    cancelled = await SendLedger.cancel(unit.conn, sends, why)  # the bus writes send state
    full = {**detail, "cancelled_sends": [str(m) for m in cancelled]} if cancelled else detail
    await _histories(unit.conn, [(e.id, e.run) for e in stopped], "stopped", reason, full)
    await record_events(
        unit.conn,
        EventType.SEQUENCE_STOPPED,
        [
            (
                e.company_id,
                e.lead_id,
                {
                    "sequence_id": str(e.sequence_id),
                    "enrolment_id": str(e.id),
                    "reason": reason,
                    **detail,
                },
            )
            for e in stopped
        ],
    )
    return stopped


_PAUSE = f"""
UPDATE sequence_enrolments e
   SET status = 'paused', paused_at = now(), run = e.run + 1, updated_at = now()
  FROM sequences s
 WHERE e.id = ANY($1::uuid[]) AND e.status = 'active' AND s.id = e.sequence_id
RETURNING {", ".join(f"e.{c.strip()}" for c in ENROLMENT_COLUMNS.split(","))},
          now() + make_interval(secs => s.resume_after_quiet_seconds) AS check_at
"""


async def pause(
    unit: Unit, enrolment_ids: Sequence[uuid.UUID], reason: str, detail: dict[str, Any]
) -> list[Enrolment]:
    """Pause active enrolments until the conversation is quiet: each gets a job at the end of
    its sequence's quiet period that resumes it, or looks again later if the lead is still
    talking. Their next step keeps its due time."""
    rows = await unit.conn.fetch(_PAUSE, list(enrolment_ids))
    paused = [Enrolment.of(r) for r in rows]
    await cancel_runs(unit.conn, [(e.id, e.run - 1) for e in paused])
    for e, row in zip(paused, rows, strict=True):
        await schedule(
            unit, e.id, e.run, company_id=e.company_id, lead_id=e.lead_id, at=row["check_at"]
        )
    await _histories(unit.conn, [(e.id, e.run) for e in paused], "paused", reason, detail)
    await record_events(
        unit.conn,
        EventType.SEQUENCE_PAUSED,
        [
            (
                e.company_id,
                e.lead_id,
                {
                    "sequence_id": str(e.sequence_id),
                    "enrolment_id": str(e.id),
                    "reason": reason,
                    **detail,
                },
            )
            for e in paused
        ],
    )
    return paused


async def live_for_lead(conn: asyncpg.Connection, lead_id: uuid.UUID) -> list[asyncpg.Record]:
    """The lead's active and paused enrolments with what their sequence does on a reply."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT e.id, e.status, e.enrolled_at, e.resumed_at, s.on_reply"
        " FROM sequence_enrolments e JOIN sequences s ON s.id = e.sequence_id"
        " WHERE e.lead_id = $1 AND e.status = ANY($2::text[]) ORDER BY e.enrolled_at",
        lead_id,
        LIVE,
    )
    return rows
