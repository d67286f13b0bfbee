"""The SQL of outbound webhooks and reminders, and the one writer of their statuses.

Ingest's API creates and edits endpoints and reminders and asks for redeliveries; the
scheduler's fan-out writes deliveries; dispatch records attempts and outcomes. Every status
move is written here and fenced: a delivery's outcome names the job that owns it
(`webhook_deliveries.job_id`) and only moves a `pending` row, so a run overtaken by a manual
redelivery can never overwrite the newer run; a reminder fires once, at the version it was
scheduled with. The caller owns the transaction (every method takes the connection).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import asyncpg

from shvya_common.contracts.events import EventType
from shvya_common.contracts.webhooks import DeliveryStatus, EndpointStatus, ReminderStatus
from shvya_common.crypto import SecretBox
from shvya_common.events import record_event
from shvya_common.webhooks.keys import secret_context

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool
_E, _D, _R = EndpointStatus, DeliveryStatus, ReminderStatus

ENDPOINT_COLUMNS = (
    "id, company_id, url, description, event_types, status, disabled_reason,"
    " consecutive_failures, CASE WHEN previous_expires_at > now() THEN previous_expires_at END"
    " AS rotating_until, last_success_at, last_failure_at, created_at, updated_at"
)
DELIVERY_COLUMNS = (
    "d.id, d.endpoint_id, d.company_id, d.event_id, d.event_type, d.status, d.attempts,"
    " d.redeliveries, d.last_status_code, d.last_error, d.last_attempt_at, d.succeeded_at,"
    " d.created_at, d.updated_at,"
    " (SELECT a.latency_ms FROM webhook_attempts a WHERE a.delivery_id = d.id"
    "  ORDER BY a.attempt DESC LIMIT 1) AS last_latency_ms,"
    " (SELECT j.run_after FROM jobs j WHERE j.id = d.job_id AND j.status = 'failed'"
    "  AND d.status = 'pending') AS next_attempt_at"
)
ATTEMPT_COLUMNS = (
    "attempt, outcome, status_code, latency_ms, error, address, response, job_attempt, created_at"
)
REMINDER_COLUMNS = (
    "id, company_id, lead_id, remind_at, title, note, data, status, version, fired_at,"
    " created_at, updated_at"
)


class NotFound(LookupError):
    """No such row in this company."""


class Conflict(Exception):
    """The row is in a state that does not allow the change; the message says why."""


@dataclass(frozen=True)
class Delivery:
    """What dispatch needs to make one attempt: the delivery, its endpoint and its event."""

    id: uuid.UUID
    status: str
    job_id: uuid.UUID
    attempts: int
    endpoint_id: uuid.UUID
    endpoint_status: str
    url: str
    company_id: uuid.UUID
    lead_id: uuid.UUID | None
    event_id: uuid.UUID
    event_type: str
    event_payload: dict[str, Any]
    event_created_at: datetime
    secret: str
    previous_secret: str | None


@dataclass(frozen=True)
class AttemptRecord:
    """One HTTP attempt's outcome, as the delivery log keeps it."""

    ok: bool
    status_code: int | None
    latency_ms: float | None
    error: str | None
    address: str | None
    response: str | None


def _record(row: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None


class WebhookRepository:
    """Endpoints, deliveries and their attempts."""

    # --- endpoints ---

    @staticmethod
    async def company_exists(conn: Executor, company_id: uuid.UUID) -> bool:
        return bool(await conn.fetchval("SELECT 1 FROM companies WHERE id = $1", company_id))

    @staticmethod
    async def create_endpoint(
        conn: Executor,
        company_id: uuid.UUID,
        *,
        url: str,
        description: str | None,
        event_types: list[str],
        secret: str,
        box: SecretBox,
    ) -> dict[str, Any]:
        endpoint_id = uuid.uuid4()
        row = await conn.fetchrow(
            "INSERT INTO webhook_endpoints (id, company_id, url, description, event_types,"
            f" secret) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}",
            endpoint_id,
            company_id,
            url,
            description,
            event_types,
            box.encrypt(secret, secret_context(endpoint_id)),
        )
        assert row is not None
        return dict(row)

    @staticmethod
    async def list_endpoints(conn: Executor, company_id: uuid.UUID) -> list[dict[str, Any]]:
        rows = await conn.fetch(
            f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE company_id = $1"
            " ORDER BY created_at, id",
            company_id,
        )
        return [dict(r) for r in rows]

    @staticmethod
    async def get_endpoint(
        conn: Executor, company_id: uuid.UUID, endpoint_id: uuid.UUID
    ) -> dict[str, Any] | None:
        return _record(
            await conn.fetchrow(
                f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints"
                " WHERE id = $1 AND company_id = $2",
                endpoint_id,
                company_id,
            )
        )

    @staticmethod
    async def update_endpoint(
        conn: asyncpg.Connection,
        company_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        *,
        url: str | None = None,
        description: str | None = None,
        event_types: list[str] | None = None,
        enabled: bool | None = None,
    ) -> dict[str, Any] | None:
        """Change what is given. Enabling a disabled or failing endpoint makes it active with
        its failures forgotten; disabling it by hand records `webhook.endpoint_disabled`."""
        old = await conn.fetchrow(
            "SELECT status FROM webhook_endpoints WHERE id = $1 AND company_id = $2 FOR UPDATE",
            endpoint_id,
            company_id,
        )
        if old is None:
            return None
        status = old["status"]
        if enabled is True:
            status = _E.ACTIVE
        elif enabled is False:
            status = _E.DISABLED
        row = await conn.fetchrow(
            "UPDATE webhook_endpoints SET url = coalesce($3, url),"
            " description = coalesce($4, description), event_types = coalesce($5, event_types),"
            " status = $6,"
            " consecutive_failures = CASE WHEN $6 = 'active' AND status <> 'active' THEN 0"
            "   ELSE consecutive_failures END,"
            " disabled_reason = CASE WHEN $6 = 'disabled' THEN"
            "   (CASE WHEN status = 'disabled' THEN disabled_reason ELSE 'disabled by hand' END)"
            "   END,"
            " updated_at = now()"
            f" WHERE id = $1 AND company_id = $2 RETURNING {ENDPOINT_COLUMNS}",
            endpoint_id,
            company_id,
            url,
            description,
            event_types,
            str(status),
        )
        assert row is not None
        if status == _E.DISABLED and old["status"] != _E.DISABLED:
            await _endpoint_disabled(conn, dict(row), "disabled by hand")
        return dict(row)

    @staticmethod
    async def delete_endpoint(
        conn: Executor, company_id: uuid.UUID, endpoint_id: uuid.UUID
    ) -> bool:
        return (
            await conn.fetchval(
                "DELETE FROM webhook_endpoints WHERE id = $1 AND company_id = $2 RETURNING id",
                endpoint_id,
                company_id,
            )
            is not None
        )

    @staticmethod
    async def rotate_secret(
        conn: asyncpg.Connection,
        company_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        *,
        secret: str,
        overlap: timedelta,
        box: SecretBox,
    ) -> dict[str, Any] | None:
        """Make `secret` the signing secret; the current one keeps signing too for `overlap`
        (a secret still in an earlier overlap is dropped)."""
        current = await conn.fetchval(
            "SELECT secret FROM webhook_endpoints WHERE id = $1 AND company_id = $2 FOR UPDATE",
            endpoint_id,
            company_id,
        )
        if current is None:
            return None
        previous = None
        if overlap > timedelta(0):
            plain = box.decrypt(current, secret_context(endpoint_id))
            previous = box.encrypt(plain, secret_context(endpoint_id, "previous_secret"))
        row = await conn.fetchrow(
            "UPDATE webhook_endpoints SET secret = $3, previous_secret = $4,"
            " previous_expires_at = CASE WHEN $4::text IS NULL THEN NULL"
            "   ELSE now() + make_interval(secs => $5::float8) END, updated_at = now()"
            f" WHERE id = $1 AND company_id = $2 RETURNING {ENDPOINT_COLUMNS}",
            endpoint_id,
            company_id,
            box.encrypt(secret, secret_context(endpoint_id)),
            previous,
            overlap.total_seconds(),
        )
        return _record(row)

    # --- fan-out ---

    @staticmethod
    async def fan_out(
        conn: asyncpg.Connection,
        company_id: uuid.UUID,
        event_id: uuid.UUID,
        event_type: str,
        *,
        except_endpoint: uuid.UUID | None = None,
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """One pending delivery per endpoint of the company subscribed to `event_type` and not
        disabled (never twice for one event); returns (delivery id, job id) of the new ones."""
        rows = await conn.fetch(
            "INSERT INTO webhook_deliveries (endpoint_id, company_id, event_id, event_type, job_id)"
            " SELECT id, company_id, $2, $3, gen_random_uuid() FROM webhook_endpoints"
            " WHERE company_id = $1 AND status <> 'disabled' AND $3 = ANY(event_types)"
            " AND ($4::uuid IS NULL OR id <> $4)"
            " ON CONFLICT (endpoint_id, event_id) DO NOTHING RETURNING id, job_id",
            company_id,
            event_id,
            event_type,
            except_endpoint,
        )
        return [(r["id"], r["job_id"]) for r in rows]

    # --- delivering ---

    @staticmethod
    async def delivery(conn: Executor, delivery_id: uuid.UUID) -> Delivery | None:
        row = await conn.fetchrow(
            "SELECT d.id, d.status, d.job_id, d.attempts, d.endpoint_id,"
            " w.status AS endpoint_status, w.url, w.secret,"
            " CASE WHEN w.previous_expires_at > now() THEN w.previous_secret END"
            " AS previous_secret, d.company_id, e.lead_id, d.event_id, e.type AS event_type,"
            " e.payload AS event_payload, e.created_at AS event_created_at"
            " FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id"
            " JOIN events e ON e.id = d.event_id WHERE d.id = $1",
            delivery_id,
        )
        if row is None:
            return None
        values = dict(row)
        values["event_payload"] = values["event_payload"] or {}
        return Delivery(**values)

    @staticmethod
    async def record_attempt(
        conn: asyncpg.Connection,
        delivery: Delivery,
        job_id: uuid.UUID,
        job_attempt: int,
        result: AttemptRecord,
    ) -> int | None:
        """Log one attempt and count it on the delivery (still pending, still this job's);
        returns the attempt's number, or None when the delivery is no longer this job's."""
        attempt = await conn.fetchval(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status_code = $3,"
            " last_error = $4, last_attempt_at = now(), updated_at = now()"
            " WHERE id = $1 AND job_id = $2 AND status = 'pending' RETURNING attempts",
            delivery.id,
            job_id,
            result.status_code,
            result.error,
        )
        if attempt is None:
            return None
        await conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, endpoint_id, attempt, job_id, job_attempt,"
            " outcome, status_code, latency_ms, error, address, response)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            " ON CONFLICT (job_id, job_attempt) DO NOTHING",
            delivery.id,
            delivery.endpoint_id,
            attempt,
            job_id,
            job_attempt,
            "succeeded" if result.ok else "failed",
            result.status_code,
            result.latency_ms,
            result.error,
            result.address,
            result.response,
        )
        return int(attempt)

    @staticmethod
    async def succeed(conn: asyncpg.Connection, delivery: Delivery, job_id: uuid.UUID) -> bool:
        """The delivery succeeded: the endpoint's run of failures ends (failing → active)."""
        moved = await conn.fetchval(
            "UPDATE webhook_deliveries SET status = 'succeeded', succeeded_at = now(),"
            " last_error = NULL, updated_at = now()"
            " WHERE id = $1 AND job_id = $2 AND status = 'pending' RETURNING id",
            delivery.id,
            job_id,
        )
        if moved is None:
            return False
        await conn.execute(
            "UPDATE webhook_endpoints SET consecutive_failures = 0, last_success_at = now(),"
            " status = CASE WHEN status = 'failing' THEN 'active' ELSE status END,"
            " updated_at = now() WHERE id = $1",
            delivery.endpoint_id,
        )
        return True

    @staticmethod
    async def fail(
        conn: asyncpg.Connection,
        delivery: Delivery,
        job_id: uuid.UUID,
        reason: str,
        *,
        disable_after: int,
    ) -> str | None:
        """The delivery's last attempt failed: it is `failed`, its endpoint `failing`, and
        `disabled` (with a `webhook.endpoint_disabled` event) once `disable_after` deliveries
        in a row have failed. Returns the endpoint's status, or None if fenced out."""
        moved = await conn.fetchval(
            "UPDATE webhook_deliveries SET status = 'failed', updated_at = now()"
            " WHERE id = $1 AND job_id = $2 AND status = 'pending' RETURNING id",
            delivery.id,
            job_id,
        )
        if moved is None:
            return None
        was = await conn.fetchval(
            "SELECT status FROM webhook_endpoints WHERE id = $1 FOR UPDATE", delivery.endpoint_id
        )
        if was is None:
            return None
        row = await conn.fetchrow(
            "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1,"
            " last_failure_at = now(), updated_at = now(),"
            " status = CASE WHEN status = 'disabled' OR consecutive_failures + 1 >= $2"
            "   THEN 'disabled' ELSE 'failing' END,"
            " disabled_reason = CASE WHEN status = 'disabled' THEN disabled_reason"
            "   WHEN consecutive_failures + 1 >= $2 THEN $3 END"
            f" WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}",
            delivery.endpoint_id,
            disable_after,
            f"{disable_after} deliveries in a row failed; the last: {reason}"[:1000],
        )
        assert row is not None
        endpoint = dict(row)
        if endpoint["status"] == _E.DISABLED and was != _E.DISABLED:
            await _endpoint_disabled(conn, endpoint, endpoint["disabled_reason"])
        return str(endpoint["status"])

    @staticmethod
    async def skip(conn: Executor, delivery: Delivery, job_id: uuid.UUID, reason: str) -> bool:
        """Not sent: the endpoint is disabled."""
        return (
            await conn.fetchval(
                "UPDATE webhook_deliveries SET status = 'skipped', last_error = $3,"
                " updated_at = now() WHERE id = $1 AND job_id = $2 AND status = 'pending'"
                " RETURNING id",
                delivery.id,
                job_id,
                reason,
            )
            is not None
        )

    # --- the delivery log ---

    @staticmethod
    async def list_deliveries(
        conn: Executor,
        company_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        *,
        status: str | None,
        limit: int,
        before: uuid.UUID | None,
    ) -> list[dict[str, Any]]:
        """Newest first; `before` (a delivery id) starts after that delivery."""
        rows = await conn.fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d"
            " WHERE d.endpoint_id = $1 AND d.company_id = $2"
            " AND ($3::text IS NULL OR d.status = $3)"
            " AND ($4::uuid IS NULL OR (d.created_at, d.id) <"
            "   (SELECT created_at, id FROM webhook_deliveries WHERE id = $4))"
            " ORDER BY d.created_at DESC, d.id DESC LIMIT $5",
            endpoint_id,
            company_id,
            status,
            before,
            limit,
        )
        return [dict(r) for r in rows]

    @staticmethod
    async def get_delivery(
        conn: Executor, company_id: uuid.UUID, delivery_id: uuid.UUID
    ) -> dict[str, Any] | None:
        row = await conn.fetchrow(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d"
            " WHERE d.id = $1 AND d.company_id = $2",
            delivery_id,
            company_id,
        )
        if row is None:
            return None
        attempts = await conn.fetch(
            f"SELECT {ATTEMPT_COLUMNS} FROM webhook_attempts WHERE delivery_id = $1"
            " ORDER BY attempt",
            delivery_id,
        )
        return {**dict(row), "attempt_log": [dict(a) for a in attempts]}

    @staticmethod
    async def redeliver(
        conn: asyncpg.Connection, company_id: uuid.UUID, delivery_id: uuid.UUID
    ) -> tuple[uuid.UUID, int, dict[str, Any]]:
        """Put a delivery back to pending under a new job (any older job then stops);
        returns (job id, redelivery number, the delivery's company/lead)."""
        row = await conn.fetchrow(
            "SELECT d.id, w.status AS endpoint_status, e.lead_id FROM webhook_deliveries d"
            " JOIN webhook_endpoints w ON w.id = d.endpoint_id JOIN events e ON e.id = d.event_id"
            " WHERE d.id = $1 AND d.company_id = $2 FOR UPDATE OF d",
            delivery_id,
            company_id,
        )
        if row is None:
            raise NotFound(f"delivery {delivery_id} does not exist in company {company_id}")
        if row["endpoint_status"] == _E.DISABLED:
            raise Conflict("the endpoint is disabled; enable it first (PATCH enabled=true)")
        moved = await conn.fetchrow(
            "UPDATE webhook_deliveries SET status = 'pending', job_id = gen_random_uuid(),"
            " redeliveries = redeliveries + 1, last_error = NULL, succeeded_at = NULL,"
            " updated_at = now() WHERE id = $1 RETURNING job_id, redeliveries",
            delivery_id,
        )
        assert moved is not None
        return moved["job_id"], moved["redeliveries"], {"lead_id": row["lead_id"]}


async def _endpoint_disabled(conn: Executor, endpoint: dict[str, Any], reason: str) -> None:
    await record_event(
        conn,
        endpoint["company_id"],
        None,
        EventType.WEBHOOK_ENDPOINT_DISABLED,
        {
            "endpoint_id": str(endpoint["id"]),
            "url": endpoint["url"],
            "reason": reason,
            "consecutive_failures": endpoint["consecutive_failures"],
        },
    )


class ReminderRepository:
    """Reminders: scheduled, rescheduled, cancelled by the API; fired by dispatch."""

    @staticmethod
    async def create_reminder(
        conn: Executor,
        company_id: uuid.UUID,
        *,
        lead_id: uuid.UUID | None,
        remind_at: datetime,
        title: str,
        note: str | None,
        data: dict[str, Any],
    ) -> dict[str, Any]:
        row = await conn.fetchrow(
            "INSERT INTO reminders (company_id, lead_id, remind_at, title, note, data)"
            f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {REMINDER_COLUMNS}",
            company_id,
            lead_id,
            remind_at,
            title,
            note,
            data,
        )
        assert row is not None
        return dict(row)

    @staticmethod
    async def lead_in_company(conn: Executor, company_id: uuid.UUID, lead_id: uuid.UUID) -> bool:
        return bool(
            await conn.fetchval(
                "SELECT 1 FROM leads WHERE id = $1 AND company_id = $2", lead_id, company_id
            )
        )

    @staticmethod
    async def list_reminders(
        conn: Executor,
        company_id: uuid.UUID,
        *,
        status: str | None,
        lead_id: uuid.UUID | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        rows = await conn.fetch(
            f"SELECT {REMINDER_COLUMNS} FROM reminders WHERE company_id = $1"
            " AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR lead_id = $3)"
            " ORDER BY remind_at, id LIMIT $4",
            company_id,
            status,
            lead_id,
            limit,
        )
        return [dict(r) for r in rows]

    @staticmethod
    async def get_reminder(
        conn: Executor, company_id: uuid.UUID, reminder_id: uuid.UUID
    ) -> dict[str, Any] | None:
        return _record(
            await conn.fetchrow(
                f"SELECT {REMINDER_COLUMNS} FROM reminders WHERE id = $1 AND company_id = $2",
                reminder_id,
                company_id,
            )
        )

    @staticmethod
    async def update_reminder(
        conn: asyncpg.Connection,
        company_id: uuid.UUID,
        reminder_id: uuid.UUID,
        *,
        remind_at: datetime | None,
        title: str | None,
        note: str | None,
        data: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Change a scheduled reminder; a new time raises its version (the caller enqueues the
        job for it, and the old job finds the version moved on)."""
        old = await conn.fetchrow(
            "SELECT status FROM reminders WHERE id = $1 AND company_id = $2 FOR UPDATE",
            reminder_id,
            company_id,
        )
        if old is None:
            raise NotFound(f"reminder {reminder_id} does not exist in company {company_id}")
        if old["status"] != _R.SCHEDULED:
            raise Conflict(f"the reminder is {old['status']}; only a scheduled one can change")
        row = await conn.fetchrow(
            "UPDATE reminders SET remind_at = coalesce($3, remind_at),"
            " version = version + CASE WHEN $3::timestamptz IS NULL THEN 0 ELSE 1 END,"
            " title = coalesce($4, title), note = coalesce($5, note), data = coalesce($6, data),"
            f" updated_at = now() WHERE id = $1 AND company_id = $2 RETURNING {REMINDER_COLUMNS}",
            reminder_id,
            company_id,
            remind_at,
            title,
            note,
            data,
        )
        assert row is not None
        return dict(row)

    @staticmethod
    async def cancel_reminder(
        conn: Executor, company_id: uuid.UUID, reminder_id: uuid.UUID
    ) -> dict[str, Any]:
        row = await conn.fetchrow(
            "WITH old AS (SELECT id, status FROM reminders WHERE id = $1 AND company_id = $2"
            " FOR UPDATE) UPDATE reminders r SET"
            " status = CASE WHEN old.status = 'scheduled' THEN 'cancelled' ELSE r.status END,"
            " updated_at = now() FROM old WHERE r.id = old.id RETURNING old.status AS was",
            reminder_id,
            company_id,
        )
        if row is None:
            raise NotFound(f"reminder {reminder_id} does not exist in company {company_id}")
        if row["was"] == _R.FIRED:
            raise Conflict("the reminder has already fired")
        return dict(row)

    @staticmethod
    async def fire_reminder(
        conn: asyncpg.Connection, reminder_id: uuid.UUID, version: int
    ) -> dict[str, Any] | None:
        """Mark a scheduled reminder fired and record its `reminder.due` event, once; None
        when it was cancelled, rescheduled (another version) or already fired."""
        row = await conn.fetchrow(
            "UPDATE reminders SET status = 'fired', fired_at = now(), updated_at = now()"
            " WHERE id = $1 AND version = $2 AND status = 'scheduled'"
            f" RETURNING {REMINDER_COLUMNS}",
            reminder_id,
            version,
        )
        if row is None:
            return None
        reminder = dict(row)
        await record_event(
            conn,
            reminder["company_id"],
            reminder["lead_id"],
            EventType.REMINDER_DUE,
            {
                "reminder_id": str(reminder["id"]),
                "title": reminder["title"],
                "note": reminder["note"],
                "remind_at": reminder["remind_at"].isoformat(),
                "data": reminder["data"],
            },
        )
        return reminder
