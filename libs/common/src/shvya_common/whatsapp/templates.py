"""WhatsApp template state, written in one place: Meta's statuses in our vocabulary, the rows a
template sync from Graph creates or updates, and the status changes Meta's
`message_template_status_update` webhook reports.

Dispatch's template sync (`GET /{waba-id}/message_templates`) and ingest's webhook both call
these functions, so a template's status has one set of transitions however it is learned. Only
`approved` templates are ever sent. A status event that names no known template changes
nothing; a sync never touches a row's local `variables` (the lead fields bound to parameters).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

# Channel names a WhatsApp template row may carry.
WHATSAPP_TEMPLATE_CHANNELS = ("whatsapp_cloud", "whatsapp")
SENDABLE = "approved"
TEMPLATE_STATUSES = frozenset(
    {
        "approved",
        "pending",
        "rejected",
        "paused",
        "disabled",
        "in_appeal",
        "pending_deletion",
        "deleted",
        "archived",
        "limit_exceeded",
    }
)
# Webhook events that are not statuses of their own. FLAGGED (quality dropped), LOCKED and
# UNLOCKED (editing) leave the template sendable as it was.
_EVENT_STATUS = {"REINSTATED": "approved", "UNARCHIVED": "approved"}
_NO_STATUS_CHANGE = frozenset({"FLAGGED", "LOCKED", "UNLOCKED"})
# An inbound route naming a WABA (entry.id of template webhooks) maps it to its company.
WABA_ROUTE_CHANNEL = "whatsapp_cloud_waba"


def status_from_graph(value: str | None) -> str | None:
    """Our status for a Graph status or webhook event; None for events that change none."""
    if not value:
        return None
    upper = value.strip().upper()
    if upper in _NO_STATUS_CHANGE:
        return None
    status = _EVENT_STATUS.get(upper, upper.lower())
    return status if status in TEMPLATE_STATUSES else None


def fallback_template_setting(company_settings: Mapping[str, Any]) -> tuple[str, str | None]:
    """(name, language or None) from companies.settings->'whatsapp_fallback_template', which
    is a template name or {"name": ..., "language": ...}; ("", None) when unset."""
    value = company_settings.get("whatsapp_fallback_template")
    if isinstance(value, str):
        return value.strip(), None
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        language = value.get("language")
        return value["name"].strip(), language if isinstance(language, str) else None
    return "", None


async def approved_fallback_template(
    conn: asyncpg.Connection | asyncpg.Pool, company_id: uuid.UUID
) -> asyncpg.Record | None:
    """(id, name) of the company's approved WhatsApp fallback template, if it has one."""
    settings = await conn.fetchval("SELECT settings FROM companies WHERE id = $1", company_id)
    name, language = fallback_template_setting(settings or {})
    if not name:
        return None
    return await conn.fetchrow(
        "SELECT id, name FROM templates WHERE company_id = $1 AND name = $2"
        " AND channel = ANY($3::text[]) AND status = 'approved'"
        " AND ($4::text IS NULL OR language = $4) ORDER BY created_at LIMIT 1",
        company_id,
        name,
        list(WHATSAPP_TEMPLATE_CHANNELS),
        language,
    )


async def companies_for_account(
    conn: asyncpg.Connection | asyncpg.Pool, waba_id: str | None, phone_number_id: str | None
) -> list[uuid.UUID]:
    """The companies whose templates live in this WhatsApp Business Account: those routed to
    the WABA (`inbound_routes` channel `whatsapp_cloud_waba`), else to the phone number, else
    the default company."""
    rows = await conn.fetch(
        "SELECT company_id FROM inbound_routes WHERE channel = $1 AND address = $2",
        WABA_ROUTE_CHANNEL,
        waba_id or "",
    )
    if not rows and phone_number_id:
        rows = await conn.fetch(
            "SELECT company_id FROM inbound_routes"
            " WHERE channel = 'whatsapp_cloud' AND address = $1",
            phone_number_id,
        )
    if not rows:
        rows = await conn.fetch("SELECT id AS company_id FROM companies WHERE is_default")
    return [r["company_id"] for r in rows]


_APPLY_EVENT = """
WITH target AS (
    SELECT id, company_id, status FROM templates
    WHERE channel = ANY($1::text[])
      AND ((provider_template_id IS NOT NULL AND provider_template_id = $2)
           OR (company_id = ANY($3::uuid[]) AND name = $4 AND language = $5))
    FOR UPDATE
), changed AS (
    UPDATE templates t SET status = COALESCE($6, t.status), status_reason = $7,
           category = COALESCE($8, t.category), updated_at = now(),
           provider_template_id = COALESCE(t.provider_template_id, $2)
    FROM target WHERE t.id = target.id AND (t.status IS DISTINCT FROM COALESCE($6, t.status)
          OR t.status_reason IS DISTINCT FROM $7)
    RETURNING t.id, t.company_id, t.name, t.language, target.status AS previous, t.status
), ev AS (
    INSERT INTO events (company_id, type, payload)
    SELECT company_id, 'template.status_changed',
           jsonb_build_object('template_id', id, 'name', name, 'language', language,
                              'previous', previous, 'status', status, 'reason', $7,
                              'source', $9::text)
    FROM changed WHERE previous IS DISTINCT FROM status
)
SELECT id, previous, status FROM changed
"""


async def apply_template_event(
    conn: asyncpg.Connection,
    companies: Sequence[uuid.UUID],
    *,
    provider_template_id: str | None,
    name: str | None,
    language: str | None,
    event: str | None,
    reason: str | None = None,
    category: str | None = None,
    source: str = "webhook",
) -> list[asyncpg.Record]:
    """Apply one status event to the templates it names; returns the rows it changed."""
    status = status_from_graph(event)
    reason = None if not reason or reason.upper() == "NONE" else reason
    rows: list[asyncpg.Record] = await conn.fetch(
        _APPLY_EVENT,
        list(WHATSAPP_TEMPLATE_CHANNELS),
        provider_template_id,
        list(companies),
        name,
        language,
        status,
        reason,
        category.lower() if category else None,
        source,
    )
    return rows


async def apply_quality_update(
    conn: asyncpg.Connection,
    companies: Sequence[uuid.UUID],
    *,
    provider_template_id: str | None,
    name: str | None,
    language: str | None,
    quality: str | None,
) -> int:
    """Record a template's new quality score (GREEN, YELLOW, RED, UNKNOWN)."""
    result = await conn.execute(
        "UPDATE templates SET quality = $6, updated_at = now() WHERE channel = ANY($1::text[])"
        " AND ((provider_template_id IS NOT NULL AND provider_template_id = $2)"
        " OR (company_id = ANY($3::uuid[]) AND name = $4 AND language = $5))",
        list(WHATSAPP_TEMPLATE_CHANNELS),
        provider_template_id,
        list(companies),
        name,
        language,
        (quality or "unknown").lower(),
    )
    return int(result.rsplit(" ", 1)[1])


def body_text(components: Iterable[Mapping[str, Any]]) -> str:
    """The BODY component's text of a Graph template definition ("" without one)."""
    for component in components:
        if str(component.get("type", "")).upper() == "BODY":
            return str(component.get("text") or "")
    return ""


@dataclass(frozen=True)
class SyncOutcome:
    seen: int
    created: int
    changed: int
    missing: int


_UPSERT = """
INSERT INTO templates AS t (company_id, name, channel, language, body, variables, status,
                            components, parameter_format, category, quality,
                            provider_template_id, status_reason, synced_at, updated_at)
VALUES ($1, $2, 'whatsapp_cloud', $3, $4, '[]'::jsonb, $5, $6, $7, $8, $9, $10, $11, now(), now())
ON CONFLICT (company_id, channel, name, language) DO UPDATE
   SET body = EXCLUDED.body, status = EXCLUDED.status, components = EXCLUDED.components,
       parameter_format = EXCLUDED.parameter_format, category = EXCLUDED.category,
       quality = EXCLUDED.quality, provider_template_id = EXCLUDED.provider_template_id,
       status_reason = EXCLUDED.status_reason, synced_at = now(), updated_at = now()
RETURNING id, (xmax = 0) AS created
"""


async def upsert_graph_templates(
    conn: asyncpg.Connection, company_id: uuid.UUID, graph_templates: Sequence[Mapping[str, Any]]
) -> SyncOutcome:
    """Bring the company's WhatsApp Cloud templates in step with Graph's list.

    A template Graph no longer lists, that an earlier sync had seen, becomes `deleted`.
    Status changes write `template.status_changed` events, as the webhook does.
    """
    created = changed = 0
    seen: list[tuple[str, str]] = []
    for tpl in graph_templates:
        name, language = tpl.get("name"), tpl.get("language")
        status = status_from_graph(tpl.get("status"))
        if not isinstance(name, str) or not isinstance(language, str) or status is None:
            continue
        components = [c for c in tpl.get("components") or [] if isinstance(c, Mapping)]
        quality = tpl.get("quality_score")
        score = quality.get("score") if isinstance(quality, Mapping) else None
        fmt = str(tpl.get("parameter_format") or "POSITIONAL").lower()
        provider_id = str(tpl["id"]) if tpl.get("id") is not None else None
        previous = await conn.fetchval(
            "SELECT status FROM templates WHERE company_id = $1 AND channel = 'whatsapp_cloud'"
            " AND name = $2 AND language = $3",
            company_id,
            name,
            language,
        )
        reason = tpl.get("rejected_reason")
        row = await conn.fetchrow(
            _UPSERT,
            company_id,
            name,
            language,
            body_text(components),
            status,
            components,
            fmt if fmt in ("positional", "named") else "positional",
            str(tpl["category"]).lower() if tpl.get("category") else None,
            str(score).lower() if score else None,
            provider_id,
            None if not reason or str(reason).upper() == "NONE" else str(reason),
        )
        assert row is not None
        seen.append((name, language))
        created += bool(row["created"])
        if previous is not None and previous != status:
            changed += 1
            await _status_event(conn, company_id, row["id"], name, language, previous, status)
    gone = await conn.fetch(
        "UPDATE templates SET status = 'deleted', updated_at = now()"
        " WHERE company_id = $1 AND channel = 'whatsapp_cloud' AND synced_at IS NOT NULL"
        " AND status <> 'deleted' AND (name, language) NOT IN"
        " (SELECT * FROM unnest($2::text[], $3::text[]))"
        " RETURNING id, name, language",
        company_id,
        [n for n, _ in seen],
        [lang for _, lang in seen],
    )
    for row in gone:
        await _status_event(
            conn, company_id, row["id"], row["name"], row["language"], None, "deleted"
        )
    return SyncOutcome(len(graph_templates), created, changed, len(gone))


async def _status_event(
    conn: asyncpg.Connection,
    company_id: uuid.UUID,
    template_id: uuid.UUID,
    name: str,
    language: str,
    previous: str | None,
    status: str,
) -> None:
    await conn.execute(
        "INSERT INTO events (company_id, type, payload) VALUES ($1, 'template.status_changed',"
        " jsonb_build_object('template_id', $2::uuid, 'name', $3::text, 'language', $4::text,"
        " 'previous', $5::text, 'status', $6::text, 'source', 'sync'))",
        company_id,
        template_id,
        name,
        language,
        previous,
        status,
    )
