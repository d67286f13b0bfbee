"""What dispatch does with each send request: route it to its channel, exactly once.

The outbound message row is the send's ledger. It is marked 'sending' (committed) before the
provider is called and 'sent' after. A redelivery that finds 'sending' cannot know whether the
provider got the message, so it records 'unknown' and does not send again: no customer gets the
same message twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from shvya_common.bus import JobContext
from shvya_common.contracts import SendParams
from shvya_dispatch.channels import ChannelRouter
from shvya_dispatch.repository import DispatchRepository

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Deps:
    repo: DispatchRepository
    router: ChannelRouter


async def handle_send(params: SendParams, job: JobContext, deps: Deps) -> dict[str, Any]:
    message_id = job.job_id
    if job.prior_status == "sending":
        await deps.repo.record_ambiguous(message_id, params.lead_id, params.company_id)
        log.warning("send_ambiguous_not_repeated", message_id=str(message_id))
        return {"status": "unknown"}
    if not await deps.repo.mark_sending(message_id):
        return {"status": "not pending"}
    result = await deps.router.send(
        params.to, params.text, params.channel, params.template_id, message_id=message_id
    )
    await deps.repo.record_sent(
        message_id, params.lead_id, params.company_id, status=result.status,
        provider_message_id=result.provider_message_id, channel=params.channel, meta=result.meta,
    )  # fmt: skip
    log.info("send_done", message_id=str(message_id), channel=params.channel, status=result.status)
    return {"status": result.status, "provider_message_id": result.provider_message_id}
