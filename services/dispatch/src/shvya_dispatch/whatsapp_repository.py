"""Dispatch's WhatsApp Cloud SQL beside sending: which template row (and language) a send
uses, received media to download and store, and the lead flag an undeliverable recipient gets."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from shvya_common.whatsapp.templates import WHATSAPP_TEMPLATE_CHANNELS, companies_for_account

_TEMPLATE_KEYS = (
    "id",
    "name",
    "language",
    "body",
    "variables",
    "status",
    "channel",
    "components",
    "parameter_format",
)
_LEAD_KEYS = ("contact_name", "phone_e164", "email", "attributes", "company_name", "language")


class WhatsAppRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def template_choices(
        self, company_id: uuid.UUID, lead_id: uuid.UUID, template_id: uuid.UUID
    ) -> tuple[Mapping[str, Any], list[Mapping[str, Any]], Mapping[str, Any]] | None:
        """The template asked for, every row of the same name (for the lead's language), and
        the lead's fields with its language and the company's fallback language."""
        row = await self.pool.fetchrow(
            "SELECT t.id, t.name, t.language, t.body, t.variables, t.status, t.channel,"
            " t.components, t.parameter_format, l.contact_name, l.phone_e164, l.email,"
            " l.attributes, l.language AS lead_language, c.name AS company_name,"
            " c.settings->>'whatsapp_template_fallback_language' AS fallback_language"
            " FROM templates t JOIN companies c ON c.id = t.company_id"
            " JOIN leads l ON l.company_id = t.company_id AND l.id = $3"
            " WHERE t.id = $1 AND t.company_id = $2",
            template_id,
            company_id,
            lead_id,
        )
        if row is None:
            return None
        siblings = await self.pool.fetch(
            "SELECT id, name, language, body, variables, status, channel, components,"
            " parameter_format FROM templates WHERE company_id = $1 AND name = $2"
            " AND channel = ANY($3::text[]) ORDER BY language",
            company_id,
            row["name"],
            list(WHATSAPP_TEMPLATE_CHANNELS),
        )
        asked = {k: row[k] for k in _TEMPLATE_KEYS}
        lead = {k: row[k] for k in _LEAD_KEYS if k != "language"}
        lead["language"] = row["lead_language"]
        lead["fallback_language"] = row["fallback_language"]
        rows: list[Mapping[str, Any]] = [{k: s[k] for k in _TEMPLATE_KEYS} for s in siblings]
        return asked, rows, lead

    async def flag_undeliverable(
        self, company_id: uuid.UUID, lead_id: uuid.UUID, channel: str, code: int, reason: str
    ) -> bool:
        """Mark the lead unreachable on WhatsApp (once) with a `lead.flagged_undeliverable`
        event; cleared when the lead writes again."""
        async with self.pool.acquire() as conn, conn.transaction():
            flagged = await conn.fetchval(
                "UPDATE leads SET whatsapp_undeliverable_at = now(),"
                " whatsapp_undeliverable_reason = $2, updated_at = now()"
                " WHERE id = $1 AND whatsapp_undeliverable_at IS NULL RETURNING id",
                lead_id,
                reason[:500],
            )
            if flagged is None:
                return False
            await conn.execute(
                "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, $2,"
                " 'lead.flagged_undeliverable', jsonb_build_object('channel', $3::text,"
                " 'code', $4::int, 'reason', $5::text))",
                company_id,
                lead_id,
                channel,
                code,
                reason[:500],
            )
        return True

    # --- media ---

    async def media_row(self, row_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            "SELECT id, company_id, message_id, channel, media_id, kind, declared_mime_type,"
            " declared_sha256, filename, status FROM inbound_media WHERE id = $1",
            row_id,
        )

    async def media_stored(
        self,
        row_id: uuid.UUID,
        *,
        key: str,
        size: int,
        sha256: str,
        mime_type: str,
        hash_matches: bool | None,
    ) -> None:
        """The file is stored: the row and the message's `meta.media` say where, and a
        `media.stored` event is written."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE inbound_media SET status = 'stored', storage_key = $2, size_bytes = $3,"
                " sha256 = $4, mime_type = $5, error = NULL, stored_at = now(), updated_at = now()"
                " WHERE id = $1 AND status <> 'stored' RETURNING company_id, message_id",
                row_id,
                key,
                size,
                sha256,
                mime_type,
            )
            if row is None:
                return
            stored = {
                "storage_key": key,
                "size_bytes": size,
                "sha256": sha256,
                "mime_type": mime_type,
                "declared_hash_matches": hash_matches,
            }
            lead_id = await conn.fetchval(
                "UPDATE messages SET meta = jsonb_set(meta, '{media}',"
                " COALESCE(meta->'media', '{}'::jsonb) || $2::jsonb), updated_at = now()"
                " WHERE id = $1 RETURNING lead_id",
                row["message_id"],
                stored,
            )
            await conn.execute(
                "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, $2,"
                " 'media.stored', $3)",
                row["company_id"],
                lead_id,
                {"message_id": str(row["message_id"]), "media_row_id": str(row_id), **stored},
            )

    async def media_refused(self, row_id: uuid.UUID, status: str, error: str) -> None:
        """The download was refused (`rejected`: size or type) or gave up (`failed`)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE inbound_media SET status = $2, error = $3, updated_at = now()"
                " WHERE id = $1 AND status <> 'stored'"
                " RETURNING company_id, message_id, (SELECT lead_id FROM messages"
                " WHERE id = inbound_media.message_id) AS lead_id",
                row_id,
                status,
                error[:1000],
            )
            if row is not None:
                await conn.execute(
                    "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, $2, $3,"
                    " jsonb_build_object('message_id', $4::uuid, 'media_row_id', $5::uuid,"
                    " 'error', $6::text))",
                    row["company_id"],
                    row["lead_id"],
                    f"media.{status}",
                    row["message_id"],
                    row_id,
                    error[:1000],
                )

    # --- template sync ---

    async def company_ids_for_account(
        self, waba_id: str, phone_number_id: str | None
    ) -> list[uuid.UUID]:
        return await companies_for_account(self.pool, waba_id, phone_number_id)
