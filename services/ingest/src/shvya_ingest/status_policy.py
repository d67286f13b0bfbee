"""What a failed delivery status changes next, by Graph error code (shvya_common.whatsapp.
graph_errors, the table dispatch uses at send time too).

For a message WhatsApp accepted and then reported `failed`:

- 131047 (outside the 24-hour window): the company's fallback template is requested instead
  (send key `fallback:<message id>`), or, without one, the message is held (`message.held`);
  free text is never sent again.
- suppress (131050, marketing opt-out): the recipient is suppressed for marketing.
- defer (131049 and friends): the same message is sent once more, no sooner than the code's
  delay (24 h for 131049): a new send with `not_before`, send key `resend:<n>:<first id>`.
- retry (Meta-side failures): the same, after STATUS_RESEND_SECONDS.
- pause (the account itself: payment, lock, policy or spam blocks): the channel is paused for
  the company, as a refusal at send time would.
- flag_undeliverable (131026 and friends): the lead is flagged unreachable on WhatsApp until it
  writes again.

Every decision writes one `message.delivery_policy` event. New sends go through the job bus
(`request_send`) inside the transaction that applied the status (the webhook's, or, for a
failure that beat dispatch's record of the wamid, the `late_failures` pass's); their send keys
make a repeated status a no-op. Messages keep their send status (`sent`): dispatch owns it; a
held message is one whose failure was recorded and that nothing will resend.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from shvya_common import pauses
from shvya_common.bus import Unit
from shvya_common.contracts import SendParams
from shvya_common.db import is_outage
from shvya_common.whatsapp.graph_errors import Decision, decide
from shvya_common.whatsapp.templates import approved_fallback_template
from shvya_ingest.statuses import Failure
from shvya_ingest.whatsapp_repository import record_event

if TYPE_CHECKING:
    from shvya_ingest.settings import IngestSettings

log = structlog.get_logger(__name__)

_PURPOSES = frozenset({"reply", "followup", "marketing", "notification", "optout_confirmation"})


@dataclass(frozen=True)
class StatusPolicyConfig:
    resend_seconds: float = 300.0
    resend_max: int = 1
    pause_seconds: float = 3600.0
    block_pause_seconds: float = 86400.0

    @classmethod
    def from_settings(cls, settings: IngestSettings) -> StatusPolicyConfig:
        return cls(
            resend_seconds=settings.whatsapp_status_resend_seconds,
            resend_max=settings.whatsapp_status_resend_max,
            pause_seconds=settings.whatsapp_status_pause_seconds,
            block_pause_seconds=settings.whatsapp_status_block_pause_seconds,
        )


def _first_code(errors: Sequence[dict[str, Any]]) -> tuple[int | None, str]:
    for error in errors:
        try:
            code = int(error.get("code"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        title = error.get("title") or error.get("message") or ""
        details = (error.get("error_data") or {}).get("details") or ""
        return code, f"{code}: {title}" + (f" ({details})" if details else "")
    return None, "failed (no error code)"


async def apply_failure_policy(
    conn: asyncpg.Connection,
    unit: Unit,
    config: StatusPolicyConfig,
    failures: Sequence[Failure],
) -> Counter[str]:
    """Act on each new failure in the caller's transaction; returns counts by action taken."""
    taken: Counter[str] = Counter()
    for failure in failures:
        message = await conn.fetchrow(
            "SELECT id, company_id, lead_id, channel, body, recipient, send_key, reply_to_id,"
            " priority, meta, send_params FROM messages WHERE id = $1 AND direction = 'outbound'",
            failure.message_id,
        )
        if message is None:
            continue
        code, reason = _first_code(failure.errors)
        decision = decide(code)
        try:
            async with conn.transaction():  # a savepoint: one failure's bug costs only itself
                outcome = await _act(conn, unit, config, message, failure, decision, code, reason)
        except (asyncpg.PostgresError, ValueError) as err:
            if isinstance(err, asyncpg.PostgresError) and is_outage(err):
                raise
            outcome = "failed"
            log.warning("delivery_policy_failed", code=code, error=type(err).__name__)
        taken[outcome] += 1
        await record_event(
            conn,
            message["company_id"],
            message["lead_id"],
            "message.delivery_policy",
            {
                "message_id": str(message["id"]),
                "code": code,
                "action": decision.action,
                "effect": decision.effect,
                "outcome": outcome,
                "why": decision.why,
            },
        )
        log.info("delivery_policy", code=code, action=decision.action, outcome=outcome)
    return taken


async def _act(
    conn: asyncpg.Connection,
    unit: Unit,
    config: StatusPolicyConfig,
    message: asyncpg.Record,
    failure: Failure,
    decision: Decision,
    code: int | None,
    reason: str,
) -> str:
    company_id, lead_id = message["company_id"], message["lead_id"]
    meta: dict[str, Any] = message["meta"] or {}
    if decision.effect == "fallback_template":
        return await _fallback(conn, unit, message, reason)
    if decision.effect == "flag_undeliverable":
        flagged = await conn.fetchval(
            "UPDATE leads SET whatsapp_undeliverable_at = $2, whatsapp_undeliverable_reason = $3,"
            " updated_at = now() WHERE id = $1 AND whatsapp_undeliverable_at IS NULL RETURNING id",
            lead_id,
            failure.status_at,
            reason[:500],
        )
        if flagged is not None:
            await record_event(
                conn,
                company_id,
                lead_id,
                "lead.flagged_undeliverable",
                {"channel": message["channel"], "code": code, "reason": reason},
            )
        return "flagged" if flagged is not None else "already_flagged"
    if decision.action == "suppress":
        scope = decision.entry.scope if decision.entry and decision.entry.scope else "all"
        added = await conn.fetchval(
            "INSERT INTO suppressions (company_id, channel, address, scope, reason)"
            " VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (company_id, channel, address, scope) DO NOTHING RETURNING id",
            company_id,
            message["channel"],
            (message["recipient"] or "").strip(),
            scope,
            reason[:2000],
        )
        if added is not None:
            await record_event(
                conn,
                company_id,
                lead_id,
                "lead.suppressed",
                {"channel": message["channel"], "scope": scope, "reason": reason},
            )
        return "suppressed" if added is not None else "already_suppressed"
    if decision.action == "pause":
        kind = decision.entry.pause if decision.entry else None
        seconds = config.block_pause_seconds if kind == "block" else config.pause_seconds
        row = await pauses.start_pause(
            conn,
            company_id,
            message["channel"],
            code or 0,
            f"WhatsApp reported a failed delivery: {reason}",
            seconds,
            None,
            None,
            lead_id,
            message["id"],
        )
        return "paused" if row["created"] else "already_paused"
    if decision.action in ("retry", "defer"):
        delay = config.resend_seconds
        if decision.action == "defer" and decision.entry and decision.entry.defer_seconds:
            delay = decision.entry.defer_seconds
        return await _resend(conn, unit, config, message, meta, failure, delay)
    return "recorded"


def _send_purpose(meta: dict[str, Any]) -> Any:
    purpose = meta.get("purpose")
    return purpose if purpose in _PURPOSES else "reply"


def _template_id(meta: dict[str, Any]) -> uuid.UUID | None:
    template = meta.get("template")
    if isinstance(template, dict) and template.get("id"):
        try:
            return uuid.UUID(str(template["id"]))
        except ValueError:
            return None
    return None


async def _resend(
    conn: asyncpg.Connection,
    unit: Unit,
    config: StatusPolicyConfig,
    message: asyncpg.Record,
    meta: dict[str, Any],
    failure: Failure,
    delay: float,
) -> str:
    send_key: str = message["send_key"] or ""
    depth, root = 0, str(message["id"])
    if send_key.startswith("resend:"):
        _, n, root = send_key.split(":", 2)
        depth = int(n) if n.isdigit() else config.resend_max
    if depth >= config.resend_max:
        return "resend_exhausted"
    resend = {
        "send_key": f"resend:{depth + 1}:{root}",
        "not_before": failure.status_at + timedelta(seconds=delay),
    }
    if message["send_params"]:
        # The send exactly as it was asked for (template parameters, subject, the quoted
        # message, the AI's metadata): dispatch's policies apply to it again as to the first.
        params = SendParams.model_validate(message["send_params"]).model_copy(update=resend)
    else:  # a row written before sends kept their parameters
        params = SendParams(
            company_id=message["company_id"],
            lead_id=message["lead_id"],
            channel=message["channel"],
            to=message["recipient"],
            text=message["body"],
            template_id=_template_id(meta),
            purpose=_send_purpose(meta),
            reply_to_message_id=message["reply_to_id"],
            **resend,
        )
    _, created = await unit.request_send(params, priority=message["priority"] or 100)
    return "resend_requested" if created else "resend_exists"


async def _fallback(
    conn: asyncpg.Connection, unit: Unit, message: asyncpg.Record, reason: str
) -> str:
    meta: dict[str, Any] = message["meta"] or {}
    company_id, lead_id = message["company_id"], message["lead_id"]
    fallback = None if _template_id(meta) else await approved_fallback_template(conn, company_id)
    if fallback is None:
        await record_event(
            conn,
            company_id,
            lead_id,
            "message.held",
            {
                "message_id": str(message["id"]),
                "channel": message["channel"],
                "reason": f"{reason}; the company has no fallback template",
            },
        )
        return "held"
    params = SendParams(
        company_id=company_id,
        lead_id=lead_id,
        channel=message["channel"],
        to=message["recipient"],
        text=message["body"],
        template_id=fallback["id"],
        send_key=f"fallback:{message['id']}",
        purpose=_send_purpose(meta),
        reply_to_message_id=message["reply_to_id"],
    )
    fallback_id, created = await unit.request_send(params, priority=message["priority"] or 100)
    if created:
        await record_event(
            conn,
            company_id,
            lead_id,
            "message.fallback_requested",
            {
                "message_id": str(message["id"]),
                "fallback_message_id": str(fallback_id),
                "template": fallback["name"],
                "reason": reason,
            },
        )
    return "fallback_requested" if created else "fallback_exists"
