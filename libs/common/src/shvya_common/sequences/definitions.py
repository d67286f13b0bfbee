"""A company's sequences and their steps: create, read, list, update, replace the steps, archive.

Editing never strands an enrolment. Steps keep their ids across edits (an incoming step is the
stored one with its `id`, else the one with its `key`), a changed step's `version` goes up (each
execution records the version it ran), and a removed step is kept, marked deleted: enrolments
waiting on it move to the first step after it (in the old order) that remains, or to the end,
and keep their due time. The caller holds the sequence row FOR UPDATE (`get(lock="update")`),
which waits for steps running now and holds new ones back until the edit commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from shvya_common.sequences.enrolments import LIVE, history
from shvya_common.sequences.steps import AnyStep, StepsError, step_columns, step_from_row

SEQUENCE_COLUMNS = (
    "id, company_id, name, description, channel, on_reply, resume_after_quiet_seconds, version,"
    " archived_at, created_at, updated_at"
)
STEP_COLUMNS = (
    "id, position, key, action, channel, body, template_id, delay_seconds, config, version,"
    " updated_at"
)
EDITABLE = ("name", "description", "channel", "on_reply", "resume_after_quiet_seconds")


@dataclass(frozen=True)
class StoredStep:
    id: uuid.UUID
    position: int
    version: int
    step: AnyStep
    updated_at: datetime

    @property
    def key(self) -> str:
        return str(self.step.key)

    @property
    def ref(self) -> tuple[uuid.UUID, str, int, str]:
        """(id, key, version, action), as history records a step."""
        return self.id, self.key, self.version, self.step.kind

    @classmethod
    def of(cls, row: asyncpg.Record) -> StoredStep:
        return cls(
            row["id"], row["position"], row["version"], step_from_row(row), row["updated_at"]
        )


@dataclass(frozen=True)
class Moved:
    """An enrolment an edit moved off a removed step (to the end when `to_key` is None)."""

    enrolment_id: uuid.UUID
    from_key: str
    to_key: str | None


async def company_exists(conn: asyncpg.Connection | asyncpg.Pool, company_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM companies WHERE id = $1", company_id))


async def get(
    conn: asyncpg.Connection,
    company_id: uuid.UUID,
    sequence_id: uuid.UUID,
    *,
    lock: Literal["share", "update"] | None = None,
) -> asyncpg.Record | None:
    """The company's sequence (None for another company's), optionally locked."""
    suffix = {None: "", "share": " FOR KEY SHARE", "update": " FOR UPDATE"}[lock]
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {SEQUENCE_COLUMNS} FROM sequences WHERE id = $1 AND company_id = $2{suffix}",
        sequence_id,
        company_id,
    )
    return row


async def list_sequences(
    conn: asyncpg.Connection, company_id: uuid.UUID, *, archived: bool, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    where = "company_id = $1 AND ($2 OR archived_at IS NULL)"
    rows = await conn.fetch(
        f"SELECT {SEQUENCE_COLUMNS} FROM sequences WHERE {where}"
        " ORDER BY created_at, id LIMIT $3 OFFSET $4",
        company_id,
        archived,
        limit,
        offset,
    )
    total = await conn.fetchval(
        f"SELECT count(*) FROM sequences WHERE {where}", company_id, archived
    )
    return list(rows), int(total)


async def live_steps(conn: asyncpg.Connection, sequence_id: uuid.UUID) -> list[StoredStep]:
    """The sequence's steps in order (removed ones left out)."""
    rows = await conn.fetch(
        f"SELECT {STEP_COLUMNS} FROM sequence_steps WHERE sequence_id = $1 AND deleted_at IS NULL"
        " ORDER BY position",
        sequence_id,
    )
    return [StoredStep.of(r) for r in rows]


async def enrolment_counts(
    conn: asyncpg.Connection, sequence_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, int]]:
    rows = await conn.fetch(
        "SELECT sequence_id, status, count(*) AS n FROM sequence_enrolments"
        " WHERE sequence_id = ANY($1::uuid[]) GROUP BY sequence_id, status",
        list(sequence_ids),
    )
    counts: dict[uuid.UUID, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["sequence_id"], {})[r["status"]] = r["n"]
    return counts


async def create(
    conn: asyncpg.Connection,
    company_id: uuid.UUID,
    fields: dict[str, Any],
    steps: Sequence[AnyStep],
) -> uuid.UUID:
    """Insert a sequence and its (checked, keyed) steps in the caller's transaction."""
    sequence_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO sequences (company_id, name, description, channel, on_reply,"
        " resume_after_quiet_seconds) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        company_id,
        fields["name"],
        fields.get("description"),
        fields["channel"],
        fields["on_reply"],
        fields["resume_after_quiet_seconds"],
    )
    await _insert_steps(conn, sequence_id, [(n, s) for n, s in enumerate(steps, start=1)])
    return sequence_id


async def update(conn: asyncpg.Connection, sequence_id: uuid.UUID, changes: dict[str, Any]) -> None:
    """Set the given editable fields; the version goes up."""
    names = [n for n in EDITABLE if n in changes]
    if not names:
        return
    sets = ", ".join(f"{n} = ${i}" for i, n in enumerate(names, start=2))
    await conn.execute(
        f"UPDATE sequences SET {sets}, version = version + 1, updated_at = now() WHERE id = $1",
        sequence_id,
        *(changes[n] for n in names),
    )


async def _insert_steps(
    conn: asyncpg.Connection, sequence_id: uuid.UUID, steps: Sequence[tuple[int, AnyStep]]
) -> None:
    if not steps:
        return
    await conn.executemany(
        "INSERT INTO sequence_steps (sequence_id, position, key, action, channel, body,"
        " template_id, delay_seconds, config) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        [
            (
                sequence_id,
                position,
                cols["key"],
                cols["action"],
                cols["channel"],
                cols["body"],
                cols["template_id"],
                cols["delay_seconds"],
                cols["config"],
            )
            for position, step in steps
            for cols in (step_columns(step),)
        ],
    )


async def replace_steps(
    conn: asyncpg.Connection,
    sequence_id: uuid.UUID,
    incoming: Sequence[AnyStep],
) -> list[Moved]:
    """Make the sequence's steps `incoming` (checked and keyed; a step's `id` names the stored
    step it is); returns the enrolments moved off removed steps."""
    old = await live_steps(conn, sequence_id)
    by_id = {s.id: s for s in old}
    by_key = {s.key: s for s in old}
    kept: dict[uuid.UUID, tuple[int, AnyStep]] = {}
    new: list[tuple[int, AnyStep]] = []
    for position, step in enumerate(incoming, start=1):
        step_id = step.id
        match = by_id.get(step_id) if step_id is not None else by_key.get(str(step.key))
        if step_id is not None and match is None:
            raise StepsError(f"step id {step_id} is not a step of this sequence")
        if match is None or match.id in kept:
            if step_id is not None:
                raise StepsError(f"step id {step_id} appears twice")
            new.append((position, step))
        else:
            kept[match.id] = (position, step)
    removed = [s for s in old if s.id not in kept]
    # Positions and keys move through values no live step has, so no swap trips the unique
    # indexes halfway.
    await conn.execute(
        "UPDATE sequence_steps SET position = -position - 1, key = '~' || id::text"
        " WHERE sequence_id = $1 AND deleted_at IS NULL",
        sequence_id,
    )
    if removed:
        await conn.execute(
            "UPDATE sequence_steps s SET deleted_at = now(), updated_at = now(), key = r.key"
            " FROM unnest($1::uuid[], $2::text[]) AS r(id, key) WHERE s.id = r.id",
            [s.id for s in removed],
            [s.key for s in removed],
        )
    for step_id, (position, step) in kept.items():
        cols = step_columns(step)
        changed = cols != step_columns(by_id[step_id].step)
        await conn.execute(
            "UPDATE sequence_steps SET position = $2, key = $3, action = $4, channel = $5,"
            " body = $6, template_id = $7, delay_seconds = $8, config = $9,"
            " version = version + $10::int, updated_at = CASE WHEN $10::int > 0 THEN now()"
            " ELSE updated_at END WHERE id = $1",
            step_id,
            position,
            cols["key"],
            cols["action"],
            cols["channel"],
            cols["body"],
            cols["template_id"],
            cols["delay_seconds"],
            cols["config"],
            int(changed),
        )
    await _insert_steps(conn, sequence_id, new)
    await conn.execute(
        "UPDATE sequences SET version = version + 1, updated_at = now() WHERE id = $1", sequence_id
    )
    return await _move_off(conn, old, set(kept), removed)


async def _move_off(
    conn: asyncpg.Connection,
    old: Sequence[StoredStep],
    kept: set[uuid.UUID],
    removed: Sequence[StoredStep],
) -> list[Moved]:
    """Move enrolments on removed steps to the next remaining step of the old order."""
    if not removed:
        return []
    successor: dict[uuid.UUID, StoredStep | None] = {}
    for index, step in enumerate(old):
        if step.id not in kept:
            successor[step.id] = next((s for s in old[index + 1 :] if s.id in kept), None)
    rows = await conn.fetch(
        "UPDATE sequence_enrolments e SET current_step_id = m.to_id, updated_at = now()"
        " FROM unnest($1::uuid[], $2::uuid[]) AS m(from_id, to_id)"
        " WHERE e.current_step_id = m.from_id AND e.status = ANY($3::text[])"
        " RETURNING e.id, e.run, m.from_id",
        list(successor),
        [s.id if s is not None else None for s in successor.values()],
        LIVE,
    )
    names = {s.id: s.key for s in old}
    moved = []
    for r in rows:
        target = successor[r["from_id"]]
        to_key = target.key if target is not None else None
        await history(
            conn,
            r["id"],
            r["run"],
            "moved",
            outcome="step removed",
            detail={"from_step": names[r["from_id"]], "to_step": to_key},
        )
        moved.append(Moved(r["id"], names[r["from_id"]], to_key))
    return moved


async def archive(conn: asyncpg.Connection, sequence_id: uuid.UUID) -> list[uuid.UUID]:
    """Mark the sequence archived; returns its live enrolments (for the caller to stop)."""
    await conn.execute(
        "UPDATE sequences SET archived_at = coalesce(archived_at, now()), is_active = false,"
        " updated_at = now() WHERE id = $1",
        sequence_id,
    )
    rows = await conn.fetch(
        "SELECT id FROM sequence_enrolments WHERE sequence_id = $1 AND status = ANY($2::text[])",
        sequence_id,
        LIVE,
    )
    return [r["id"] for r in rows]


async def missing_templates(
    conn: asyncpg.Connection, company_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """The template ids that are not templates of the company."""
    found = await conn.fetch(
        "SELECT id FROM templates WHERE company_id = $1 AND id = ANY($2::uuid[])",
        company_id,
        list(ids),
    )
    have = {r["id"] for r in found}
    return [i for i in dict.fromkeys(ids) if i not in have]


async def stage_names(conn: asyncpg.Connection, company_id: uuid.UUID) -> set[str]:
    """The company's stage names, folded to lower case."""
    rows = await conn.fetch(
        "SELECT DISTINCT lower(s.name) AS name FROM stages s"
        " JOIN pipelines p ON p.id = s.pipeline_id WHERE p.company_id = $1",
        company_id,
    )
    return {r["name"] for r in rows}
