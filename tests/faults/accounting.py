"""Waiting for a scenario to settle, then counting what happened to every lead.

Quiescence is an observable state, polled: every accepted message has a reply in a final state,
no job or send is pending in PostgreSQL and the jobs stream is empty. A scenario that loses work
never gets there, so the wait also ends at a deadline, or earlier when nothing observable has
changed for `stall` seconds (longer than any retry, ack wait or reconciler horizon the suite
configures), and says which.

The count is per lead: inbound rows, job rows, outbound rows by status and provider deliveries.
From those: accepted without a delivered reply (missing), more than one delivery (duplicates),
dead-lettered work (jobs, sends and DLQ-stream entries, by id) and sends recorded `unknown`,
split by whether the provider got them. A missing reply with an `unknown` record is the platform
saying "this send may have left, so it is not repeated" (the crash came between recording
`sending` and the provider's answer); one with no such record was lost silently.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from nats.js.errors import NotFoundError

from tests.faults.harness import Scenario
from tests.faults.load import Lead
from tests.faults.providers import email_key, phone_key

# Everything else is still moving (the outbox may add states of its own: those count as pending).
FINAL_SENDS = (
    "sent",
    "delivered",
    "read",
    "logged",
    "failed",
    "dlq",
    "unknown",
    "suppressed",
    "held",
    "orphan",
)
FINAL_JOBS = ("completed", "dlq", "orphan", "cancelled")

_SNAPSHOT = """
WITH inb AS (
    SELECT id FROM messages
     WHERE direction = 'inbound' AND provider_message_id = ANY($1::text[])
)
SELECT
  (SELECT count(*) FROM jobs WHERE status <> ALL($2::text[])) AS jobs_pending,
  (SELECT count(*) FROM messages
    WHERE direction = 'outbound' AND status <> ALL($3::text[])) AS sends_pending,
  cardinality($1::text[]) - (
    SELECT count(*) FROM inb
     WHERE EXISTS (SELECT 1 FROM messages o WHERE o.reply_to_id = inb.id
                     AND o.direction = 'outbound' AND o.status = ANY($3::text[]))
  ) AS unanswered,
  (SELECT count(*) FROM jobs) AS jobs,
  (SELECT count(*) FROM jobs WHERE status = ANY($2::text[])) AS jobs_final,
  (SELECT count(*) FROM messages WHERE direction = 'outbound') AS outbound,
  (SELECT count(*) FROM messages
    WHERE direction = 'outbound' AND status = ANY($3::text[])) AS outbound_final
"""


@dataclass
class Quiescence:
    reached: bool
    reason: str  # "quiescent", "stalled", "deadline"
    seconds: float
    last: dict[str, Any] = field(default_factory=dict)


async def _stream_messages(sc: Scenario) -> int | None:
    """Messages in the jobs stream (0 if it does not exist), None when NATS cannot say."""
    try:
        async with sc.nats_client() as nc:
            try:
                info = await nc.jetstream().stream_info(sc.jobs_stream)
            except NotFoundError:
                return 0
            return int(info.state.messages)
    except Exception:
        return None


async def quiesce(
    sc: Scenario,
    accepted: Iterable[str],
    deliveries: Callable[[], Counter[str]],
    *,
    deadline: float = 120.0,
    stall: float = 20.0,
    interval: float = 0.5,
) -> Quiescence:
    """Poll until quiescent, stalled or past `deadline` seconds; PostgreSQL or NATS being
    unreachable for a moment is just another state to wait through."""
    ids = list(accepted)
    started = time.monotonic()
    last_change = started
    previous: tuple[Any, ...] | None = None
    state: dict[str, Any] = {}
    while True:
        try:
            async with sc.db() as conn:
                row = await conn.fetchrow(_SNAPSHOT, ids, list(FINAL_JOBS), list(FINAL_SENDS))
            state = dict(row) if row is not None else {}
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
            state = {"db_error": type(err).__name__}
        state["stream"] = await _stream_messages(sc)
        state["delivered"] = sum(deliveries().values())
        now = time.monotonic()
        if (
            "db_error" not in state
            and state["unanswered"] == 0
            and state["jobs_pending"] == 0
            and state["sends_pending"] == 0
            and state["stream"] in (0, None)
        ):
            return Quiescence(True, "quiescent", now - started, state)
        signature = tuple(sorted(state.items()))
        if signature != previous:
            previous, last_change = signature, now
        elif now - last_change > stall:
            return Quiescence(False, "stalled", now - started, state)
        if now - started > deadline:
            return Quiescence(False, "deadline", now - started, state)
        await asyncio.sleep(interval)


@dataclass
class Counts:
    offered: int
    accepted: int
    inbound: int
    jobs: int
    phantom_jobs: int  # job rows with no lead (written by a claim that found no row)
    outbound: int
    outbound_by_status: dict[str, int]
    delivered: int  # provider deliveries in all
    missing: int  # accepted leads the provider got no reply for
    lost: int  # of those, the ones with no `unknown` record either: silently lost
    duplicates: int  # leads the provider got more than one reply for
    dlq: int  # distinct dead-lettered ids: job rows, send rows and DLQ-stream entries
    dlq_stream: int | None
    unknown_delivered: int
    unknown_missing: int
    # Leads the provider got a reply for whose reply row says it was not sent (nor unknown).
    delivered_unrecorded: int = 0
    per_lead: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def refused(self) -> int:
        return self.offered - self.accepted


async def dlq_stream_entries(sc: Scenario) -> Counter[str] | None:
    """How many DLQ-stream entries each job id has; None when NATS cannot say."""
    try:
        async with sc.nats_client() as nc:
            js = nc.jetstream()
            try:
                info = await js.stream_info(sc.dlq_stream)
            except NotFoundError:
                return Counter()
            entries: Counter[str] = Counter()
            if not info.state.messages:
                return entries
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    raw = await js.get_msg(sc.dlq_stream, seq)
                except NotFoundError:
                    continue
                payload = json.loads(raw.data or b"{}")
                entries[str(payload.get("envelope", {}).get("job_id"))] += 1
            return entries
    except Exception:
        return None


async def count(
    sc: Scenario, leads: list[Lead], accepted: Iterable[str], deliveries: Counter[str]
) -> Counts:
    accepted_ids = set(accepted)
    async with sc.db() as conn:
        lead_rows = await conn.fetch("SELECT id, phone_e164, email FROM leads")
        key_of = {
            r["id"]: email_key(r["email"]) if r["email"] else phone_key(r["phone_e164"] or "")
            for r in lead_rows
        }
        inbound = await conn.fetch(
            "SELECT lead_id, count(*) AS n FROM messages WHERE direction = 'inbound'"
            " GROUP BY lead_id"
        )
        jobs = await conn.fetch("SELECT lead_id, count(*) AS n FROM jobs GROUP BY lead_id")
        outbound = await conn.fetch(
            "SELECT lead_id, status, count(*) AS n FROM messages WHERE direction = 'outbound'"
            " GROUP BY lead_id, status"
        )
        dead_rows = await conn.fetch(
            "SELECT id::text FROM jobs WHERE status = 'dlq' UNION"
            " SELECT id::text FROM messages WHERE direction = 'outbound' AND status = 'dlq'"
        )
    per_lead: dict[str, dict[str, Any]] = {
        lead.key: {"inbound": 0, "jobs": 0, "outbound": Counter(), "delivered": 0} for lead in leads
    }

    def slot(lead_id: Any) -> dict[str, Any]:
        key = key_of.get(lead_id, f"lead:{lead_id}")
        return per_lead.setdefault(
            key, {"inbound": 0, "jobs": 0, "outbound": Counter(), "delivered": 0}
        )

    for r in inbound:
        slot(r["lead_id"])["inbound"] += r["n"]
    phantom = 0
    for r in jobs:
        if r["lead_id"] is None:
            phantom += r["n"]
        else:
            slot(r["lead_id"])["jobs"] += r["n"]
    by_status: Counter[str] = Counter()
    for r in outbound:
        slot(r["lead_id"])["outbound"][r["status"]] += r["n"]
        by_status[r["status"]] += r["n"]
    for key, n in deliveries.items():
        per_lead.setdefault(key, {"inbound": 0, "jobs": 0, "outbound": Counter(), "delivered": 0})
        per_lead[key]["delivered"] = n

    stream_ids = await dlq_stream_entries(sc)
    dead = {r["id"] for r in dead_rows} | set(stream_ids or ())
    accepted_keys = {lead.key for lead in leads if lead.provider_message_id in accepted_ids}
    missing_keys = [k for k in accepted_keys if per_lead[k]["delivered"] == 0]
    lost = sum(1 for k in missing_keys if not per_lead[k]["outbound"].get("unknown"))
    unknown_delivered = unknown_missing = 0
    sent_like = {"sent", "delivered", "read", "logged", "unknown"}
    delivered_unrecorded = sum(
        1
        for d in per_lead.values()
        if d["delivered"] and not sent_like.intersection(s for s, n in d["outbound"].items() if n)
    )
    for data in per_lead.values():
        if data["outbound"].get("unknown"):
            if data["delivered"]:
                unknown_delivered += data["outbound"]["unknown"]
            else:
                unknown_missing += data["outbound"]["unknown"]
    return Counts(
        offered=len(leads),
        accepted=len(accepted_keys),
        inbound=sum(r["n"] for r in inbound),
        jobs=sum(r["n"] for r in jobs),
        phantom_jobs=phantom,
        outbound=sum(by_status.values()),
        outbound_by_status=dict(by_status),
        delivered=sum(deliveries.values()),
        missing=len(missing_keys),
        lost=lost,
        duplicates=sum(1 for d in per_lead.values() if d["delivered"] > 1),
        dlq=len(dead),
        dlq_stream=None if stream_ids is None else sum(stream_ids.values()),
        unknown_delivered=unknown_delivered,
        unknown_missing=unknown_missing,
        delivered_unrecorded=delivered_unrecorded,
        per_lead=per_lead,
    )


@dataclass
class Row:
    """One line of the table: a scenario, its counts and whether its guarantee held."""

    fault: str
    held: bool
    counts: Counts | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    quiescence: Quiescence | None = None

    def explain(self) -> str:
        lines = [f"{self.fault}: {'held' if self.held else 'NOT held'} ({self.seconds:.0f}s)"]
        lines += [f"  - {n}" for n in self.notes]
        if self.counts is not None:
            c = self.counts
            lines.append(
                f"  outbound by status {c.outbound_by_status}; phantom jobs {c.phantom_jobs};"
                f" DLQ stream {c.dlq_stream}; refused {c.refused}"
            )
        if self.quiescence is not None:
            q = self.quiescence
            lines.append(f"  settled: {q.reason} after {q.seconds:.0f}s, last state {q.last}")
        return "\n".join(lines)


COLUMNS = (
    "fault",
    "accepted",
    "inbound",
    "jobs",
    "outbound",
    "delivered",
    "missing",
    "duplicates",
    "dlq",
    "unknown (dlv/not)",
    "held",
)


def _cells(row: Row) -> list[str]:
    c = row.counts
    if c is None:
        return [row.fault, *["–"] * 9, "yes" if row.held else "no"]
    return [
        row.fault,
        f"{c.accepted}/{c.offered}",
        str(c.inbound),
        str(c.jobs),
        str(c.outbound),
        str(c.delivered),
        str(c.missing),
        str(c.duplicates),
        str(c.dlq),
        f"{c.unknown_delivered}/{c.unknown_missing}",
        "yes" if row.held else "no",
    ]


def table(rows: list[Row], *, markdown: bool = False) -> str:
    cells = [list(COLUMNS), *(_cells(r) for r in rows)]
    if markdown:
        out = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(COLUMNS)]
        out += ["| " + " | ".join(r) + " |" for r in cells[1:]]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
