"""The campaign API's SQL: campaigns of one company, their state changes, the lead a preview
renders for, and every per-campaign count from one query (`COUNTS`).

State changes are conditional UPDATEs (`WHERE status = ANY(...)`) that return the row, so a
pause racing a run's completion, or two resumes, settle in the database: one wins, the other
is told the status it found.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from shvya_common.campaigns import AUDIENCE_COUNT_SQL, Audience

COLUMNS = """
id, company_id, name, status, subject, text_body, html_body, audience, send_window,
rate_per_minute, run_seq, materialized_at, started_at, paused_at, completed_at, created_at,
updated_at
"""

UPDATABLE = frozenset(
    {"name", "subject", "text_body", "html_body", "audience", "send_window", "rate_per_minute"}
)

# Every count of a campaign in one statement: each recipient with its message's status, the
# opens and clicks recorded on that message, and the bounce or unsubscribe suppressions of its
# address that came after its send was requested.
COUNTS = """
SELECT count(*) AS recipients,
       count(*) FILTER (WHERE r.status = 'pending') AS pending,
       count(*) FILTER (WHERE m.status IN ('queued', 'sending', 'retrying')) AS queued,
       count(*) FILTER (WHERE m.status IN ('sent', 'logged')) AS sent,
       count(*) FILTER (WHERE m.status = 'scheduled') AS deferred,
       count(*) FILTER (WHERE r.status = 'skipped' OR m.status = 'suppressed') AS suppressed,
       count(*) FILTER (WHERE x.bounced) AS bounced,
       count(*) FILTER (WHERE (r.status = 'failed' OR m.status IN ('dlq', 'held', 'cancelled'))
                          AND x.bounced IS NOT TRUE) AS failed,
       count(*) FILTER (WHERE m.status = 'unknown') AS unknown,
       count(*) FILTER (WHERE e.opened) AS opened,
       count(*) FILTER (WHERE e.machine_opened) AS machine_opened,
       count(*) FILTER (WHERE e.clicked) AS clicked,
       count(*) FILTER (WHERE e.machine_clicked) AS machine_clicked,
       count(*) FILTER (WHERE x.unsubscribed) AS unsubscribed
FROM campaign_recipients r
LEFT JOIN messages m ON m.id = r.message_id
LEFT JOIN LATERAL (
    SELECT bool_or(ev.type = 'email.opened' AND NOT ev.machine) AS opened,
           bool_or(ev.type = 'email.opened' AND ev.machine) AS machine_opened,
           bool_or(ev.type = 'email.clicked' AND NOT ev.machine) AS clicked,
           bool_or(ev.type = 'email.clicked' AND ev.machine) AS machine_clicked
    FROM (SELECT type, coalesce((payload->>'machine')::boolean, false) AS machine
          FROM events_all
          WHERE r.message_id IS NOT NULL AND payload->>'message_id' = r.message_id::text
            AND type IN ('email.opened', 'email.clicked')) ev
) e ON true
LEFT JOIN LATERAL (
    SELECT bool_or(s.reason LIKE 'hard bounce%') AS bounced,
           bool_or(s.reason LIKE 'unsubscribe%') AS unsubscribed
    FROM suppressions s
    WHERE r.requested_at IS NOT NULL AND s.company_id = r.company_id
      AND s.channel IN ('email', 'all') AND lower(s.address) = lower(r.email)
      AND s.created_at >= r.requested_at
) x ON true
WHERE r.campaign_id = $1
"""

_LEAD = """
SELECT l.id, l.company_id, l.contact_name, l.phone_e164, l.email, l.timezone, l.attributes,
       st.name AS stage, c.name AS company_name, c.timezone AS company_timezone
FROM leads l
JOIN companies c ON c.id = l.company_id
LEFT JOIN stages st ON st.id = l.stage_id
WHERE l.company_id = $2 AND (l.id = $1 OR ($1::uuid IS NULL AND lower(l.email) = lower($3)))
ORDER BY l.created_at
LIMIT 1
"""


class CampaignRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def company_exists(self, company_id: uuid.UUID) -> bool:
        return bool(await self.pool.fetchval("SELECT 1 FROM companies WHERE id = $1", company_id))

    async def create(self, company_id: uuid.UUID, values: dict[str, Any]) -> asyncpg.Record:
        row = await self.pool.fetchrow(
            "INSERT INTO campaigns (company_id, name, subject, text_body, html_body, audience,"
            " send_window, rate_per_minute) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            f" RETURNING {COLUMNS}",
            company_id,
            values["name"],
            values["subject"],
            values["text_body"],
            values["html_body"],
            values["audience"],
            values["send_window"],
            values["rate_per_minute"],
        )
        assert row is not None
        return row

    async def get(
        self, company_id: uuid.UUID, campaign_id: uuid.UUID, conn: asyncpg.Connection | None = None
    ) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await (conn or self.pool).fetchrow(
            f"SELECT {COLUMNS} FROM campaigns WHERE id = $1 AND company_id = $2",
            campaign_id,
            company_id,
        )
        return row

    async def list_campaigns(
        self, company_id: uuid.UUID, status: str | None, limit: int, offset: int
    ) -> tuple[list[asyncpg.Record], int]:
        rows = await self.pool.fetch(
            f"SELECT {COLUMNS}, count(*) OVER () AS total FROM campaigns"
            " WHERE company_id = $1 AND ($2::text IS NULL OR status = $2)"
            " ORDER BY created_at DESC, id LIMIT $3 OFFSET $4",
            company_id,
            status,
            limit,
            offset,
        )
        return rows, (rows[0]["total"] if rows else 0)

    async def update(
        self, company_id: uuid.UUID, campaign_id: uuid.UUID, values: dict[str, Any]
    ) -> asyncpg.Record | None:
        """Apply `values` (column → value) to a draft or paused campaign; None if it is in
        another state (or not there)."""
        columns = list(values)
        if not set(columns) <= UPDATABLE:
            raise ValueError(f"not updatable: {sorted(set(columns) - UPDATABLE)}")
        assignments = ", ".join(f"{c} = ${i + 3}" for i, c in enumerate(columns))
        row: asyncpg.Record | None = await self.pool.fetchrow(
            f"UPDATE campaigns SET {assignments}, updated_at = now()"
            " WHERE id = $1 AND company_id = $2 AND status IN ('draft', 'paused')"
            f" RETURNING {COLUMNS}",
            campaign_id,
            company_id,
            *(values[c] for c in columns),
        )
        return row

    async def move(
        self,
        conn: asyncpg.Connection,
        company_id: uuid.UUID,
        campaign_id: uuid.UUID,
        to: str,
        from_statuses: list[str],
    ) -> bool:
        """Set the status to `to` if it is one of `from_statuses` (paused_at for a pause)."""
        row = await conn.fetchval(
            "UPDATE campaigns SET status = $3, updated_at = now(),"
            " paused_at = CASE WHEN $3 = 'paused' THEN now() ELSE paused_at END"
            " WHERE id = $1 AND company_id = $2 AND status = ANY($4::text[]) RETURNING id",
            campaign_id,
            company_id,
            to,
            from_statuses,
        )
        return row is not None

    async def delete_draft(self, company_id: uuid.UUID, campaign_id: uuid.UUID) -> bool:
        return (
            await self.pool.fetchval(
                "DELETE FROM campaigns WHERE id = $1 AND company_id = $2 AND status = 'draft'"
                " RETURNING id",
                campaign_id,
                company_id,
            )
            is not None
        )

    async def counts(self, campaign_id: uuid.UUID) -> dict[str, int]:
        row = await self.pool.fetchrow(COUNTS, campaign_id)
        assert row is not None
        return dict(row)

    async def audience_size(self, company_id: uuid.UUID, audience: Audience) -> int:
        size: int = await self.pool.fetchval(AUDIENCE_COUNT_SQL, company_id, *audience.sql_args())
        return size

    async def recipients(
        self,
        campaign_id: uuid.UUID,
        status: str | None,
        limit: int,
        offset: int,
    ) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(
            "SELECT r.lead_id, r.email, r.timezone, r.status, r.reason, r.message_id,"
            " r.requested_at, m.status AS send_status"
            " FROM campaign_recipients r LEFT JOIN messages m ON m.id = r.message_id"
            " WHERE r.campaign_id = $1 AND ($2::text IS NULL OR r.status = $2)"
            " ORDER BY r.seq LIMIT $3 OFFSET $4",
            campaign_id,
            status,
            limit,
            offset,
        )
        return rows

    async def lead(
        self, company_id: uuid.UUID, lead_id: uuid.UUID | None, email: str | None = None
    ) -> asyncpg.Record | None:
        """The lead with this id, or else with this email address, in the company."""
        row: asyncpg.Record | None = await self.pool.fetchrow(_LEAD, lead_id, company_id, email)
        return row
