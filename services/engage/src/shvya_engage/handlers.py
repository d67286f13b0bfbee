"""What engage does with each job: ai.engage answers an inbound message and hands the reply to
dispatch as a send request.

A redelivered ai.engage finds its reply's send key already taken and stops; the send request
and its outbound message are created in one transaction keyed by that send key, so a reply is
never queued twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from shvya_common.bus import JobBus, JobContext
from shvya_common.contracts import EngageParams, SendParams
from shvya_common.contracts.jobs import AiMeta
from shvya_common.errors import PermanentError
from shvya_engage.repository import EngageRepository
from shvya_engage.responders import Responder

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Deps:
    bus: JobBus
    repo: EngageRepository
    responder: Responder
    history_messages: int


async def handle_engage(params: EngageParams, job: JobContext, deps: Deps) -> dict[str, Any]:
    send_key = f"reply:{params.message_id}"
    if await deps.repo.reply_exists(send_key):
        log.info("engage_already_answered")
        return {"skipped": "already answered"}
    ctx = await deps.repo.load_context(params.lead_id, params.message_id, deps.history_messages)
    if ctx is None:
        raise PermanentError(f"lead {params.lead_id} or message {params.message_id} not found")
    reply = await deps.responder.reply(ctx)
    to = ctx.email if ctx.channel == "email" else ctx.phone_e164
    if not to:
        raise PermanentError(f"lead has no address for channel {ctx.channel}")
    send = SendParams(
        company_id=ctx.company_id, lead_id=ctx.lead_id, channel=ctx.channel,  # type: ignore[arg-type]
        to=to, text=reply.text, send_key=send_key, purpose="reply",
        reply_to_message_id=ctx.message_id,
        ai=AiMeta(responder=reply.responder, model=reply.model,  # type: ignore[arg-type]
                  prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens),
    )  # fmt: skip
    async with deps.bus.pool.acquire() as conn, conn.transaction():
        message_id, created = await deps.bus.request_send(
            conn, send, priority=job.priority, job_id=job.job_id
        )
        if created:
            await deps.repo.record_reply(
                conn, ctx, job_id=job.job_id, reply_message_id=message_id,
                responder=reply.responder, model=reply.model,
                prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
            )  # fmt: skip
    log.info("engage_replied", responder=reply.responder, model=reply.model,
             reply_message_id=str(message_id))  # fmt: skip
    return {"reply_message_id": str(message_id), "responder": reply.responder}
