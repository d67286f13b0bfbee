"""What engage does with each job: ai.engage answers an inbound message, ai.summary summarises
a lead's conversation into `leads.attributes['summary']`, followup.bumpup nudges a silent lead.

A reply is grounded: the knowledge base is searched with the inbound text, the best chunks go
into the prompt as numbered sources, and the text that comes back passes the guards before it
is handed to dispatch as a send request. A redelivered ai.engage finds its reply's send key
taken and stops; the send request, its outbound message, the event and the AI session are
written in one transaction, so a reply is never queued twice.

A bump-up re-checks everything at run time, because the lead may have replied since the sweep
picked it: the last message must still be ours, silent long enough, on WhatsApp, and under the
maximum in a row. Its send key `bumpup:<lead>:<n>` makes a redelivery a no-op.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from shvya_common.bus import JobBus, JobContext, Registry
from shvya_common.contracts import BumpupParams, EngageParams, SendParams, SummaryParams
from shvya_common.contracts.jobs import AiMeta
from shvya_common.errors import PermanentError
from shvya_common.ids import new_id
from shvya_engage.breaker import reply_breaker_open
from shvya_engage.followups import template_bumpup
from shvya_engage.guards import ChannelLimits, guard_text
from shvya_engage.prompts import (
    SourceChunk,
    build_bumpup_prompt,
    build_reply_prompt,
    build_summary_prompt,
)
from shvya_engage.repository import WHATSAPP, EngageRepository
from shvya_engage.responders import OFFLINE, Generation, Responder
from shvya_engage.settings import EngageSettings

log = structlog.get_logger(__name__)
registry = Registry("engage")

BUMPUP_PRIORITY = 95


@dataclass(frozen=True)
class Retrieved:
    """Knowledge-base chunks for a query, and how they were found."""

    chunks: list[SourceChunk]
    mode: str
    # Why a search did not run (no embedder, chunks not embedded yet, ...), if one did not.
    note: str | None = None


# (company_id, query, k, known_empty) -> the best chunks; the knowledge base behind it is wired
# in app.py. `known_empty`: the caller has just seen the company has no chunks (no search).
Retriever = Callable[[uuid.UUID, str, int, bool], Awaitable[Retrieved]]


@dataclass(frozen=True)
class Deps:
    bus: JobBus
    repo: EngageRepository
    responder: Responder
    retrieve: Retriever
    settings: EngageSettings

    @property
    def limits(self) -> ChannelLimits:
        s = self.settings
        return ChannelLimits(s.whatsapp_max_chars, s.email_max_chars, s.other_max_chars)


@registry.task("ai.engage")
async def handle_engage(params: EngageParams, job: JobContext, deps: Deps) -> dict[str, Any]:
    settings = deps.settings
    send_key = f"reply:{params.message_id}"
    if params.revision is not None:
        # The customer edited a message already answered, and the company answers edits.
        send_key += f":edit:{params.revision}"
    breaker_window = settings.reply_breaker_window_seconds if settings.reply_breaker_max else 0.0
    loaded = await deps.repo.load_reply(
        params.lead_id, params.message_id, settings.history_messages, send_key, breaker_window
    )
    if loaded.answered:
        log.info("engage_already_answered")
        return {"skipped": "already answered"}
    ctx = loaded.context
    if ctx is None:
        raise PermanentError(f"lead {params.lead_id} or message {params.message_id} not found")
    if ctx.lead.handoff_by is not None:
        log.info("engage_skipped_handoff", by=ctx.lead.handoff_by)
        return {"skipped": f"handed off to an agent ({ctx.lead.handoff_by})"}
    if ctx.deleted:
        # Deleted by the customer before the reply ran (its body is now the deletion's
        # placeholder): neither the AI nor the inbox shows its text again.
        log.info("engage_skipped_deleted_message")
        return {"skipped": "deleted by the customer"}
    if ctx.group_id is not None:
        # A group conversation is not the bot's to answer, and never in private.
        log.info("engage_skipped_group_message")
        return {"skipped": "group message"}
    to = ctx.lead.email if ctx.channel == "email" else ctx.lead.phone_e164
    if not to and ctx.channel == "whatsapp_cloud":
        to = ctx.lead.wa_user_id  # a username user: answered by business-scoped user id
    if not to:
        raise PermanentError(f"lead has no address for channel {ctx.channel}")
    # The count came with the load; only a lead at the limit pays for the breaker's statement
    # (which counts again and raises its event once per window).
    if settings.reply_breaker_max and loaded.recent_replies >= settings.reply_breaker_max:
        if await reply_breaker_open(deps.bus.pool, ctx, settings):
            return {"skipped": "reply breaker open: too many automated replies to this lead"}
    found = (
        await deps.retrieve(ctx.company_id, ctx.message_text, settings.kb_top_k, not loaded.has_kb)
        if settings.kb_top_k
        else Retrieved([], "none")
    )
    prompt = build_reply_prompt(
        ctx,
        found.chunks,
        history_budget=settings.history_token_budget,
        source_budget=settings.kb_token_budget,
        message_budget=settings.message_token_limit,
    )
    reply = await deps.responder.reply(ctx, prompt)
    guarded = guard_text(reply.text, ctx.channel, deps.limits, settings.reply_fallback)
    send = SendParams(
        company_id=ctx.company_id,
        lead_id=ctx.lead_id,
        channel=ctx.channel,
        to=to,
        text=guarded.text,
        send_key=send_key,
        purpose="reply",
        reply_to_message_id=ctx.message_id,
        # An answer to an edited message quotes it, so the customer sees what it answers.
        context_message_id=ctx.provider_message_id if params.revision is not None else None,
        ai=AiMeta(
            responder=reply.responder,
            model=reply.model,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            sources=[s.doc_id for s in prompt.sources],
        ),
    )
    payload = {
        "responder": reply.responder,
        "model": reply.model,
        "offline": reply.responder == OFFLINE,
        "retrieval_mode": found.mode,
        "retrieval_note": found.note,
        "sources": [s.describe() for s in prompt.sources],
        "history_turns": prompt.history_turns,
        "guards": list(guarded.actions),
    }
    # One statement: the send row, the ai.reply_generated event and the AI session together,
    # committed by itself, then published.
    reply_id = new_id()
    message_id, _ = await deps.bus.request_send(
        send,
        priority=job.priority,
        job_id=job.job_id,
        message_id=reply_id,
        along=deps.repo.reply_record(
            ctx,
            job_id=job.job_id,
            reply_message_id=reply_id,
            payload=payload,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
        ),
    )
    log.info(
        "engage_replied",
        responder=reply.responder,
        model=reply.model,
        sources=len(prompt.sources),
        retrieval_mode=found.mode,
        reply_message_id=str(message_id),
    )
    return {
        "reply_message_id": str(message_id),
        "responder": reply.responder,
        "sources": len(prompt.sources),
    }


@registry.task("ai.summary")
async def handle_summary(params: SummaryParams, job: JobContext, deps: Deps) -> dict[str, Any]:
    settings = deps.settings
    conv = await deps.repo.load_conversation(params.lead_id, settings.summary_history_messages)
    if conv is None:
        raise PermanentError(f"lead {params.lead_id} not found")
    if not conv.turns:
        log.info("summary_skipped_no_messages")
        return {"skipped": "no conversation yet"}
    prompt = build_summary_prompt(conv.lead, conv.turns, budget=settings.summary_token_budget)
    result = await deps.responder.summarize(conv, prompt)
    stored = {
        **result.summary.model_dump(mode="json"),
        "responder": result.responder,
        "model": result.model,
        "offline": result.responder == "offline",
        "generated_at": datetime.now(UTC).isoformat(),
        "reason": params.reason,
        "job_id": str(job.job_id),
        "messages": prompt.history_turns,
        "last_message_id": str(conv.last_message_id) if conv.last_message_id else None,
    }
    event = {
        "job_id": str(job.job_id),
        "reason": params.reason,
        "responder": result.responder,
        "model": result.model,
        "offline": result.responder == "offline",
        "sentiment": result.summary.sentiment,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "messages": prompt.history_turns,
    }
    await deps.repo.save_summary(conv.lead, stored, event)
    log.info("summary_stored", responder=result.responder, sentiment=result.summary.sentiment)
    return {"sentiment": result.summary.sentiment, "responder": result.responder}


@registry.task("followup.bumpup")
async def handle_bumpup(params: BumpupParams, job: JobContext, deps: Deps) -> dict[str, Any]:
    settings = deps.settings
    number = params.bump_number
    state = await deps.repo.load_bumpup_state(params.lead_id, turns=10)
    if state is None:
        raise PermanentError(f"lead {params.lead_id} not found")
    skip: str | None = None
    silent_since = datetime.now(UTC) - timedelta(days=settings.bumpup_silent_days)
    if state.last_direction != "outbound":
        skip = "lead replied" if state.last_direction == "inbound" else "no message of ours"
        await deps.repo.cancel_followups(deps.bus.pool, params.lead_id)
    elif state.lead.handoff_by is not None:
        skip = f"handed off to an agent ({state.lead.handoff_by})"
    elif state.whatsapp_channel not in WHATSAPP or not state.lead.phone_e164:
        skip = "no WhatsApp conversation"
    elif state.sent >= number:
        skip = f"bump-up {number} already sent"
    elif state.unanswered >= settings.bumpup_max:
        skip = f"{state.unanswered} bump-ups already unanswered (max {settings.bumpup_max})"
    elif state.last_message_at is not None and state.last_message_at > silent_since:
        skip = "not silent long enough"
    if skip is not None:
        log.info("bumpup_skipped", reason=skip, bump_number=number)
        return {"skipped": skip}
    assert state.whatsapp_channel is not None and state.lead.phone_e164 is not None
    fallback = template_bumpup(state.lead.lead_id, state.lead.first_name, number)
    if settings.bumpup_ai:
        prompt = build_bumpup_prompt(
            state.config.system_prompt,
            state.lead,
            state.turns,
            days=settings.bumpup_silent_days,
            number=number,
            budget=800,
        )
        generated = await deps.responder.bumpup(state, prompt, number)
    else:
        generated = Generation(fallback, OFFLINE, None)
    guarded = guard_text(generated.text, state.whatsapp_channel, deps.limits, fallback)
    send = SendParams(
        company_id=state.lead.company_id,
        lead_id=state.lead.lead_id,
        channel=state.whatsapp_channel,
        to=state.lead.phone_e164,
        text=guarded.text,
        send_key=f"bumpup:{params.lead_id}:{number}",
        purpose="followup",
        ai=AiMeta(
            responder=generated.responder,
            model=generated.model,
            prompt_tokens=generated.prompt_tokens,
            completion_tokens=generated.completion_tokens,
        ),
    )
    event = {
        "job_id": str(job.job_id),
        "bump_number": number,
        "responder": generated.responder,
        "model": generated.model,
        "offline": generated.responder == OFFLINE,
        "prompt_tokens": generated.prompt_tokens,
        "completion_tokens": generated.completion_tokens,
        "guards": list(guarded.actions),
    }
    async with deps.bus.unit() as unit:
        message_id, created = await unit.request_send(
            send, priority=BUMPUP_PRIORITY, job_id=job.job_id
        )
        if created:
            event["message_id"] = str(message_id)
            await deps.repo.record_bumpup(
                unit.conn,
                state.lead,
                number=number,
                message_id=message_id,
                job_id=job.job_id,
                event=event,
            )
    log.info(
        "bumpup_requested",
        bump_number=number,
        message_id=str(message_id),
        responder=generated.responder,
        created=created,
    )
    return {"message_id": str(message_id), "bump_number": number, "created": created}
