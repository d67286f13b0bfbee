"""Ingest's WhatsApp SQL beside filing: who a sender is, what edits, deletions and reactions
change (on WhatsApp Cloud and WhatsApp Web alike, and whether an edit is answered again), what
filing a message sets going (media downloads, ad attribution), identity changes, marketing
preferences, and the events that keep what is not acted on.

None of these statements creates an inbound message. Each method runs in the caller's
transaction. Identities are locked per BSUID (`pg_advisory_xact_lock`, in key order), so two
webhooks about the same person link or merge their leads once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shvya_common.bus import Unit
from shvya_common.contracts import EngageParams
from shvya_ingest.meta_items import (
    Edit,
    IdentityChange,
    Inbound,
    PreferenceChange,
    Reaction,
    Revoke,
    Sender,
)
from shvya_ingest.repository import CompanyRoute

WHATSAPP_CHANNELS = ["whatsapp_cloud", "whatsapp_web", "whatsapp"]
_IDENTITY_LOCK = 1397249586
DELETED_BODY = "[Message deleted by the customer]"


async def record_event(
    conn: asyncpg.Connection | asyncpg.Pool,
    company_id: uuid.UUID | None,
    lead_id: uuid.UUID | None,
    kind: str,
    payload: dict[str, Any],
) -> None:
    """The one way these webhooks write an event."""
    await conn.execute(
        "INSERT INTO events (company_id, lead_id, type, payload) VALUES ($1, $2, $3, $4)",
        company_id,
        lead_id,
        kind,
        payload,
    )


async def _lock_identities(conn: asyncpg.Connection, keys: Sequence[str]) -> None:
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(k))"
        " FROM (SELECT DISTINCT unnest($2::text[]) AS k ORDER BY 1) AS keys",
        _IDENTITY_LOCK,
        list(keys),
    )


async def lead_by(
    conn: asyncpg.Connection, company_id: uuid.UUID, *, phone: str | None, user_id: str | None
) -> asyncpg.Record | None:
    """The lead known by this phone number, else by this BSUID."""
    return await conn.fetchrow(
        "SELECT id, phone_e164, wa_user_id FROM leads WHERE company_id = $1"
        " AND ((phone_e164 IS NOT NULL AND phone_e164 = $2)"
        " OR (wa_user_id IS NOT NULL AND wa_user_id = $3))"
        " ORDER BY (phone_e164 = $2) DESC NULLS LAST, created_at LIMIT 1 FOR UPDATE",
        company_id,
        phone,
        user_id,
    )


async def merge_leads(
    conn: asyncpg.Connection, company_id: uuid.UUID, keep: uuid.UUID, lose: uuid.UUID, why: str
) -> None:
    await conn.execute("SELECT merge_leads($1, $2)", keep, lose)
    await record_event(
        conn, company_id, keep, "lead.merged", {"kept": str(keep), "merged": str(lose), "why": why}
    )


async def link_identities(
    conn: asyncpg.Connection, route: CompanyRoute, senders: Sequence[Sender]
) -> int:
    """Make every sender with a BSUID one lead before filing: a phone lead learns its BSUID, a
    BSUID lead its phone number, two leads of one person are merged, and a new person with both
    gets a lead with both. Returns how many leads changed (0 in the steady state)."""
    by_user = {s.user_id: s for s in senders if s.user_id}
    if not by_user:
        return 0
    users = sorted(by_user)
    await _lock_identities(conn, users)
    found = await conn.fetch(
        "SELECT i.user_id, i.phone, p.id AS phone_lead, p.wa_user_id AS phone_lead_user,"
        " u.id AS user_lead FROM unnest($2::text[], $3::text[]) AS i(user_id, phone)"
        " LEFT JOIN leads p ON p.company_id = $1 AND p.phone_e164 = i.phone"
        " LEFT JOIN leads u ON u.company_id = $1 AND u.wa_user_id = i.user_id",
        route.company_id,
        users,
        [by_user[u].phone for u in users],
    )
    changed = 0
    for row in found:
        sender = by_user[row["user_id"]]
        phone_lead, user_lead = row["phone_lead"], row["user_lead"]
        if sender.phone is None or (phone_lead is not None and phone_lead == user_lead):
            continue
        changed += 1
        if phone_lead is not None and user_lead is not None:
            await merge_leads(conn, route.company_id, phone_lead, user_lead, "same WhatsApp user")
            user_lead = None
        if phone_lead is not None:
            await conn.execute(
                "UPDATE leads SET wa_user_id = $2, updated_at = now() WHERE id = $1",
                phone_lead,
                sender.user_id,
            )
        elif user_lead is not None:
            await conn.execute(
                "UPDATE leads SET phone_e164 = $2, updated_at = now() WHERE id = $1",
                user_lead,
                sender.phone,
            )
        else:
            await conn.execute(
                "INSERT INTO leads (company_id, pipeline_id, stage_id, phone_e164, wa_user_id)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                route.company_id,
                route.pipeline_id,
                route.new_stage_id,
                sender.phone,
                sender.user_id,
            )
    return changed


async def update_profiles(
    conn: asyncpg.Connection, company_id: uuid.UUID, senders: Sequence[Sender]
) -> None:
    """Usernames change at will and parent ids appear later: leads keep the latest."""
    by_user = {s.user_id: s for s in senders if s.user_id and (s.username or s.parent_user_id)}
    if not by_user:
        return
    users = sorted(by_user)
    await conn.execute(
        "UPDATE leads l SET wa_username = COALESCE(i.username, l.wa_username),"
        " wa_parent_user_id = COALESCE(i.parent, l.wa_parent_user_id), updated_at = now()"
        " FROM unnest($2::text[], $3::text[], $4::text[]) AS i(user_id, username, parent)"
        " WHERE l.company_id = $1 AND l.wa_user_id = i.user_id"
        " AND (l.wa_username IS DISTINCT FROM COALESCE(i.username, l.wa_username)"
        " OR l.wa_parent_user_id IS DISTINCT FROM COALESCE(i.parent, l.wa_parent_user_id))",
        company_id,
        users,
        [by_user[u].username for u in users],
        [by_user[u].parent_user_id for u in users],
    )


@dataclass(frozen=True)
class FiledMessage:
    """An inbound item and where filing put it."""

    item: Inbound
    message_id: uuid.UUID
    lead_id: uuid.UUID
    created: bool


async def after_filing(
    conn: asyncpg.Connection, company_id: uuid.UUID, filed: Sequence[FiledMessage]
) -> list[asyncpg.Record]:
    """What a filed message sets going: its media row, the lead's ad attribution and username,
    the lead's undeliverable flag cleared. Returns the media rows still to download
    (id, message_id)."""
    await update_profiles(conn, company_id, [f.item.sender for f in filed])
    media = [f for f in filed if f.item.media is not None]
    if media:
        await conn.execute(
            "INSERT INTO inbound_media (company_id, message_id, channel, media_id, kind,"
            " declared_mime_type, declared_sha256, filename)"
            " SELECT $1, m, 'whatsapp_cloud', i, k, t, h, f"
            " FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])"
            " AS u(m, i, k, t, h, f) ON CONFLICT (message_id) DO NOTHING",
            company_id,
            [f.message_id for f in media],
            [f.item.media.media_id for f in media if f.item.media],
            [f.item.media.kind for f in media if f.item.media],
            [f.item.media.mime_type for f in media if f.item.media],
            [f.item.media.sha256 for f in media if f.item.media],
            [f.item.media.filename for f in media if f.item.media],
        )
    referred = [f for f in filed if f.created and f.item.referral]
    if referred:
        attributed = await conn.fetch(
            "UPDATE leads l SET attribution = u.referral, updated_at = now()"
            " FROM (SELECT DISTINCT ON (lead) lead, referral FROM unnest($1::uuid[], $2::jsonb[])"
            " AS r(lead, referral)) AS u WHERE l.id = u.lead AND l.attribution IS NULL"
            " RETURNING l.id, l.attribution",
            [f.lead_id for f in referred],
            [f.item.referral for f in referred],
        )
        for row in attributed:
            await record_event(
                conn, company_id, row["id"], "lead.attributed", {"referral": row["attribution"]}
            )
    created = list({f.lead_id for f in filed if f.created})
    if created:
        await conn.execute(
            "UPDATE leads SET whatsapp_undeliverable_at = NULL,"
            " whatsapp_undeliverable_reason = NULL WHERE id = ANY($1::uuid[])"
            " AND whatsapp_undeliverable_at IS NOT NULL",
            created,
        )
    if not media:
        return []
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, message_id FROM inbound_media WHERE message_id = ANY($1::uuid[])"
        " AND status = 'pending'",
        [f.message_id for f in media],
    )
    return rows


async def _original(
    conn: asyncpg.Connection, company_id: uuid.UUID, wamid: str, channel: str = "whatsapp_cloud"
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, lead_id, body, meta, edited_at, deleted_at FROM messages"
        " WHERE company_id = $1 AND channel = $3 AND provider_message_id = $2"
        " AND direction = 'inbound' FOR UPDATE",
        company_id,
        wamid,
        channel,
    )


@dataclass(frozen=True)
class Changed:
    """What an edit, deletion or reaction did: `outcome` is applied, duplicate or unmatched."""

    outcome: str
    message_id: uuid.UUID | None = None
    lead_id: uuid.UUID | None = None
    edit_count: int = 0
    answered: bool = False


async def apply_edit(
    conn: asyncpg.Connection, company_id: uuid.UUID, edit: Edit, channel: str = "whatsapp_cloud"
) -> Changed:
    """The original takes the new text; its previous text and meta become a revision."""
    original = await _original(conn, company_id, edit.original_wamid, channel)
    if original is None:
        return Changed("unmatched")
    at = edit.at or datetime.now(UTC)
    kept = await conn.fetchval(
        "INSERT INTO message_revisions (message_id, kind, provider_event_id, previous_body,"
        " previous_meta, new_body, occurred_at) VALUES ($1, 'edit', $2, $3, $4, $5, $6)"
        " ON CONFLICT (message_id, provider_event_id) DO NOTHING RETURNING id",
        original["id"],
        edit.wamid,
        original["body"],
        original["meta"],
        edit.text,
        at,
    )
    if kept is None:
        return Changed("duplicate", original["id"], original["lead_id"])
    count = await conn.fetchval(
        "UPDATE messages SET"
        " body = CASE WHEN deleted_at IS NULL AND (edited_at IS NULL OR edited_at <= $3)"
        "             THEN $2 ELSE body END,"
        " edited_at = GREATEST(edited_at, $3),"
        " meta = meta || jsonb_build_object('edit_count',"
        "        COALESCE((meta->>'edit_count')::int, 0) + 1, 'edited', $4::jsonb),"
        " updated_at = now() WHERE id = $1 RETURNING (meta->>'edit_count')::int",
        original["id"],
        edit.text,
        at,
        edit.meta,
    )
    answered = bool(
        await conn.fetchval(
            "SELECT 1 FROM messages WHERE send_key = 'reply:' || $1::text", str(original["id"])
        )
    )
    await record_event(
        conn,
        company_id,
        original["lead_id"],
        "message.edited",
        {"message_id": str(original["id"]), "edit_id": edit.wamid, "edit_count": count},
    )
    return Changed("applied", original["id"], original["lead_id"], count, answered)


async def answer_edit(unit: Unit, company_id: uuid.UUID, changed: Changed) -> bool:
    """The company's edit policy, for every WhatsApp channel: one that answers edits
    (`companies.settings.whatsapp_edits = "reply"`) gets a new reply to an edited message that
    was already answered (one `ai.engage` per edit, in the edit's unit of work); otherwise the
    edit only updates the text (a reply not sent yet reads the new text anyway). True when a
    reply was asked for."""
    if changed.outcome != "applied" or not changed.answered:
        return False
    if changed.message_id is None or changed.lead_id is None:
        return False
    policy = await unit.conn.fetchval(
        "SELECT settings->>'whatsapp_edits' FROM companies WHERE id = $1", company_id
    )
    if policy != "reply":
        return False
    params = EngageParams(
        lead_id=changed.lead_id, message_id=changed.message_id, revision=changed.edit_count
    )
    await unit.enqueue_job(
        "ai.engage",
        params,
        f"ai.engage:{changed.message_id}:edit:{changed.edit_count}",
        company_id=company_id,
        lead_id=changed.lead_id,
    )
    return True


async def apply_revoke(
    conn: asyncpg.Connection,
    company_id: uuid.UUID,
    revoke: Revoke,
    channel: str = "whatsapp_cloud",
) -> Changed:
    """The original is marked deleted; its text is kept as a revision, not shown to the AI."""
    original = await _original(conn, company_id, revoke.original_wamid, channel)
    if original is None:
        return Changed("unmatched")
    at = revoke.at or datetime.now(UTC)
    kept = await conn.fetchval(
        "INSERT INTO message_revisions (message_id, kind, provider_event_id, previous_body,"
        " previous_meta, occurred_at) VALUES ($1, 'revoke', $2, $3, $4, $5)"
        " ON CONFLICT (message_id, provider_event_id) DO NOTHING RETURNING id",
        original["id"],
        revoke.wamid,
        original["body"],
        original["meta"],
        at,
    )
    if kept is None or original["deleted_at"] is not None:
        return Changed("duplicate", original["id"], original["lead_id"])
    await conn.execute(
        "UPDATE messages SET deleted_at = $2, body = $3,"
        " meta = meta || '{\"deleted\": true}'::jsonb, updated_at = now() WHERE id = $1",
        original["id"],
        at,
        DELETED_BODY,
    )
    await record_event(
        conn,
        company_id,
        original["lead_id"],
        "message.deleted",
        {"message_id": str(original["id"]), "revoke_id": revoke.wamid},
    )
    return Changed("applied", original["id"], original["lead_id"])


async def apply_reaction(
    conn: asyncpg.Connection,
    company_id: uuid.UUID,
    reaction: Reaction,
    channel: str = "whatsapp_cloud",
) -> Changed:
    """The reaction is attached to the message it reacts to (ours or theirs); a later one from
    the same person replaces it, an empty one removes it."""
    target = await conn.fetchrow(
        "SELECT id, lead_id FROM messages WHERE company_id = $1 AND channel = $3"
        " AND provider_message_id = $2 ORDER BY direction LIMIT 1",
        company_id,
        reaction.target_wamid,
        channel,
    )
    if target is None:
        return Changed("unmatched")
    at = reaction.at or datetime.now(UTC)
    row = await conn.fetchrow(
        "INSERT INTO message_reactions AS r (company_id, message_id, lead_id, reactor, emoji,"
        " provider_message_id, reacted_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (message_id, reactor) DO UPDATE SET emoji = EXCLUDED.emoji,"
        " provider_message_id = EXCLUDED.provider_message_id, reacted_at = EXCLUDED.reacted_at,"
        " updated_at = now() WHERE r.reacted_at <= EXCLUDED.reacted_at"
        " AND r.provider_message_id <> EXCLUDED.provider_message_id RETURNING id",
        company_id,
        target["id"],
        target["lead_id"],
        reaction.sender.address,
        reaction.emoji,
        reaction.wamid,
        at,
    )
    if row is None:
        return Changed("duplicate", target["id"], target["lead_id"])
    await record_event(
        conn,
        company_id,
        target["lead_id"],
        "message.reaction",
        {"message_id": str(target["id"]), "emoji": reaction.emoji, "reaction_id": reaction.wamid},
    )
    return Changed("applied", target["id"], target["lead_id"])


async def change_identity(
    conn: asyncpg.Connection, route: CompanyRoute, change: IdentityChange
) -> Changed:
    """A lead follows its person to a new phone number or a new BSUID (one record kept)."""
    company_id = route.company_id
    keys = [
        k for k in (change.old_phone, change.new_phone, change.old_user_id, change.new_user_id) if k
    ]
    await _lock_identities(conn, keys)
    lead = await lead_by(conn, company_id, phone=change.old_phone, user_id=change.old_user_id)
    if lead is None:
        # Already moved (a retried webhook), or someone we never heard from.
        lead = await lead_by(conn, company_id, phone=change.new_phone, user_id=change.new_user_id)
        if lead is None:
            return Changed("unmatched")
    lead_id: uuid.UUID = lead["id"]
    new_phone = change.new_phone or lead["phone_e164"]
    new_user = change.new_user_id or lead["wa_user_id"]
    if new_phone == lead["phone_e164"] and new_user == lead["wa_user_id"]:
        return Changed("duplicate", lead_id=lead_id)
    for other in await conn.fetch(
        "SELECT id FROM leads WHERE company_id = $1 AND id <> $2"
        " AND (phone_e164 = $3 OR wa_user_id = $4)",
        company_id,
        lead_id,
        new_phone,
        new_user,
    ):
        await merge_leads(conn, company_id, lead_id, other["id"], change.kind)
    await conn.execute(
        "UPDATE leads SET phone_e164 = $2, wa_user_id = $3,"
        " wa_parent_user_id = COALESCE($4, wa_parent_user_id),"
        " contact_name = COALESCE(contact_name, $5), updated_at = now() WHERE id = $1",
        lead_id,
        new_phone,
        new_user,
        change.new_parent_user_id,
        change.name,
    )
    address = new_phone if new_phone != lead["phone_e164"] else new_user
    if address:
        await conn.execute(
            "INSERT INTO lead_contacts (lead_id, channel, address, is_primary)"
            " VALUES ($1, 'whatsapp_cloud', $2, true) ON CONFLICT DO NOTHING",
            lead_id,
            address,
        )
    kind = "lead.number_changed" if change.new_phone else "lead.user_id_changed"
    await record_event(
        conn,
        company_id,
        lead_id,
        kind,
        {
            "source": change.kind,
            "old_phone": lead["phone_e164"],
            "new_phone": new_phone,
            "old_user_id": lead["wa_user_id"],
            "new_user_id": new_user,
        },
    )
    return Changed("applied", lead_id=lead_id)


async def apply_preference(
    conn: asyncpg.Connection, company_id: uuid.UUID, change: PreferenceChange
) -> Changed:
    """Marketing `stop` suppresses marketing sends to the person; `resume` lifts that."""
    if change.category != "marketing_messages" or change.value not in ("stop", "resume"):
        return Changed("unmatched")
    sender = change.sender
    addresses = [a for a in (sender.phone, sender.user_id) if a]
    lead = await lead_by(conn, company_id, phone=sender.phone, user_id=sender.user_id)
    lead_id = lead["id"] if lead is not None else None
    if change.value == "stop":
        rows = await conn.fetch(
            "INSERT INTO suppressions (company_id, channel, address, scope, reason)"
            " SELECT $1, 'whatsapp_cloud', a, 'marketing', $3 FROM unnest($2::text[]) AS a"
            " ON CONFLICT (company_id, channel, address, scope) DO NOTHING RETURNING id",
            company_id,
            addresses,
            f"user_preferences: marketing stop ({change.detail or 'no detail'})"[:500],
        )
        kind = "lead.marketing_opt_out"
    else:
        rows = await conn.fetch(
            "DELETE FROM suppressions WHERE company_id = $1 AND channel = ANY($3::text[])"
            " AND lower(address) = ANY($2::text[]) AND scope = 'marketing' RETURNING id",
            company_id,
            [a.lower() for a in addresses],
            WHATSAPP_CHANNELS,
        )
        kind = "lead.marketing_resumed"
    if not rows:
        return Changed("duplicate", lead_id=lead_id)
    await record_event(
        conn, company_id, lead_id, kind, {"channel": "whatsapp_cloud", "detail": change.detail}
    )
    return Changed("applied", lead_id=lead_id)
