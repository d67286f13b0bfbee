"""What dispatch does with each send request: apply the channel's rules, then send it once.

First the policy engine (policies.py) decides. A suppressed recipient completes the send as
'suppressed'. Free text outside WhatsApp's window is converted to the fallback template, or
held as 'held'. Pauses, quiet hours and pacing defer the send (DeferJob) to the earliest allowed
moment.

The outbound message row is the send's ledger, and the job bus its only writer
(`shvya_common.bus.ledgers.SendLedger`; every write is fenced by this run's attempt). It is
marked 'sending' (committed) before the provider is called and 'sent' after. A later run that
finds 'sending' cannot know whether the provider got the message, so it records 'unknown' and
does not send again; a channel that cannot confirm a send it may have made
(`SendOutcomeUnknown`) is recorded the same way (or 'sent', when the provider's acknowledgement
of the id it carries arrived first): no customer gets the same message twice.

Provider refusals that need more than retry-or-dead-letter (channels/errors.py):

- outside the window: convert to the fallback template, or hold, and never retry the free text;
- opted out: suppress the recipient, then dead-letter;
- undeliverable (WhatsApp 131026 and friends): flag the lead, then dead-letter;
- sender refused: pause the channel for the company, then defer;
- WhatsApp Web account restricted, timelocked (463), banned or logged out: pause the account,
  then defer (never retried into the restriction);
- a paused WhatsApp Web account's send that may go through WhatsApp Cloud (the lead's window
  is open): cancelled here and requested again on whatsapp_cloud, in one transaction.

The pacing slot is released only after the send is recorded, so the gap counts from `sent_at`.

`webhook.reminder` (outbound webhook deliveries and reminders) is declared here too; what it
does is in `shvya_dispatch.webhooks`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import structlog

from shvya_common.bus import JobBus, JobContext, Registry
from shvya_common.bus.ledgers import SendLedger, is_database_outage
from shvya_common.contracts import SendParams, WebhookParams
from shvya_common.contracts.events import EventType
from shvya_common.contracts.states import SendStatus
from shvya_common.errors import DeferJob
from shvya_common.events import record_event
from shvya_common.metrics import POLICY_DEFERRALS, SENDS
from shvya_dispatch.channels import ChannelRouter, SendResult
from shvya_dispatch.channels.errors import (
    AccountPausedError,
    ChannelPausedError,
    RecipientOptedOutError,
    SendOutcomeUnknown,
    UndeliverableError,
    WindowClosedError,
)
from shvya_dispatch.policies import PolicyEngine, Verdict
from shvya_dispatch.repository import DispatchRepository
from shvya_dispatch.webhooks import RETRY as WEBHOOK_RETRY
from shvya_dispatch.webhooks import Webhooks
from shvya_dispatch.webhooks import handle as handle_webhook_job

if TYPE_CHECKING:
    from shvya_dispatch.web_accounts import WebAccounts

log = structlog.get_logger(__name__)
registry = Registry("dispatch")

AMBIGUOUS_REDELIVERY = "a run stopped during the send; not repeated, as it may have left"


@dataclass(frozen=True)
class Deps:
    repo: DispatchRepository
    router: ChannelRouter
    policies: PolicyEngine
    sends: SendLedger
    webhooks: Webhooks
    # Moving a send to another channel (a paused WhatsApp Web account's) is one unit of work.
    bus: JobBus | None = None
    # WhatsApp Web's account supervisor (leases, probes, inbound), run beside the worker.
    web_accounts: WebAccounts | None = None


@registry.task("webhook.reminder", retry=WEBHOOK_RETRY)
async def handle_webhook(params: WebhookParams, job: JobContext, deps: Deps) -> dict[str, Any]:
    """Deliver one outbound webhook, or fire one reminder."""
    return await handle_webhook_job(params, job, deps.webhooks)


@registry.task("dispatch.send")
async def handle_send(params: SendParams, job: JobContext, deps: Deps) -> dict[str, Any]:
    message_id = job.job_id
    if job.prior_status == "sending":
        await deps.sends.record_unknown(message_id, job.attempt, AMBIGUOUS_REDELIVERY)
        SENDS.labels(params.channel, "unknown").inc()
        log.warning("send_ambiguous_not_repeated", message_id=str(message_id))
        return {"status": "unknown"}
    try:
        return await _policed_send(params, job, deps)
    except DeferJob as deferral:
        POLICY_DEFERRALS.labels(params.channel, deferral_reason(deferral.reason)).inc()
        SENDS.labels(params.channel, "deferred").inc()
        raise


def deferral_reason(reason: str) -> str:
    """The bounded label of a deferral's reason text (pacing, quiet_hours, paused, ...)."""
    text = reason.lower()
    for label, marker in (
        ("quiet_hours", "quiet hours"),
        ("paused", "paused"),
        ("daily_cap", "daily cap"),
        ("pacing", "pacing"),
        ("window", "window"),
    ):
        if marker in text:
            return label
    return "other"


async def _policed_send(params: SendParams, job: JobContext, deps: Deps) -> dict[str, Any]:
    message_id = job.job_id
    verdict = await deps.policies.evaluate(params, message_id)
    if verdict.action == "move":
        return await _reroute(params, job, deps, verdict.reason)
    if verdict.action != "send":
        status: Literal["suppressed", "held"] = (
            "suppressed" if verdict.action == "suppress" else "held"
        )
        return await _finish_unsent(params, job, deps, status, verdict.reason)
    if verdict.template_id is not None:
        log.info("send_converted_to_template", template=verdict.template_name)
    reservation = await deps.policies.reserve(params, message_id, verdict)
    extra = reservation.meta if reservation is not None else {}
    try:
        return await _send(params, job, verdict, deps, extra)
    except SendOutcomeUnknown as err:
        recorded = await deps.sends.record_unknown(
            message_id,
            job.attempt,
            str(err),
            provider_message_id=err.provider_message_id,
            meta={**extra, **err.meta} if err.meta or extra else None,
        )
        if recorded == SendStatus.SENT:
            # The provider's acknowledgement arrived after we stopped waiting, before this.
            SENDS.labels(params.channel, "sent").inc()
            log.info("send_confirmed_late", message_id=str(message_id), channel=params.channel)
            return {"status": "sent", "provider_message_id": err.provider_message_id}
        SENDS.labels(params.channel, "unknown").inc()
        log.warning(
            "send_outcome_unknown_not_repeated", message_id=str(message_id), reason=str(err)
        )
        return {"status": "unknown", "reason": str(err)}
    finally:
        if reservation is not None:
            await deps.policies.settle(reservation)


async def _reroute(params: SendParams, job: JobContext, deps: Deps, reason: str) -> dict[str, Any]:
    """Cancel this WhatsApp Web send and request the same text on WhatsApp Cloud (its own row,
    send key `<key>:cloud`, under Cloud's rules), in one transaction: exactly one of the two
    can ever leave."""
    if deps.bus is None:
        raise DeferJob(datetime.now(UTC) + timedelta(seconds=60), reason)
    cloud = params.model_copy(
        update={"channel": "whatsapp_cloud", "send_key": f"{params.send_key}:cloud"}
    )
    async with deps.bus.unit(acquire_timeout=5) as unit:
        note = f"moved to whatsapp_cloud: {reason}"
        if not await SendLedger.cancel(unit.conn, [job.job_id], note):
            return {"status": "not pending"}
        moved_to, _ = await unit.request_send(cloud, priority=job.priority)
        await record_event(
            unit.conn,
            params.company_id,
            params.lead_id,
            EventType.MESSAGE_REROUTED,
            {
                "message_id": str(job.job_id),
                "from_channel": params.channel,
                "to_channel": "whatsapp_cloud",
                "new_message_id": str(moved_to),
                "reason": reason[:2000],
            },
        )
    SENDS.labels(params.channel, "rerouted").inc()
    log.info("send_rerouted", message_id=str(job.job_id), to="whatsapp_cloud", reason=reason)
    return {"status": "rerouted", "message_id": str(moved_to)}


async def _finish_unsent(
    params: SendParams,
    job: JobContext,
    deps: Deps,
    status: Literal["suppressed", "held"],
    reason: str,
) -> dict[str, Any]:
    if not await deps.sends.record_unsent(job.job_id, job.attempt, status=status, reason=reason):
        return {"status": "not pending"}
    SENDS.labels(params.channel, status).inc()
    log.info(f"send_{status}", message_id=str(job.job_id), channel=params.channel, reason=reason)
    return {"status": status, "reason": reason}


async def _send(
    params: SendParams,
    job: JobContext,
    verdict: Verdict,
    deps: Deps,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message_id = job.job_id
    converted: dict[str, Any] | None = None
    try:
        if not await deps.sends.mark_sending(message_id, job.attempt):
            return {"status": "not pending"}
        if verdict.template_id is not None:
            converted = {"name": verdict.template_name, "reason": verdict.reason}
            result = await _attempt(params, message_id, deps, verdict.template_id)
        else:
            try:
                result = await _attempt(params, message_id, deps, params.template_id)
            except WindowClosedError as err:
                if params.template_id is not None:
                    raise
                # Our record of the window disagreed with the provider's: never retry free text.
                fallback = await deps.policies.fallback_template(params.company_id)
                if fallback is None:
                    reason = f"{err.reason}; the company has no fallback template"
                    return await _finish_unsent(params, job, deps, "held", reason)
                converted = {"name": fallback[1], "reason": err.reason}
                result = await _attempt(params, message_id, deps, fallback[0])
    except Exception as err:
        # Channels map every provider failure to our errors; a raw database error here came
        # from marking the send (it may have committed unseen) or from our own lookups
        # (templates, accounts) before any request was made: the send did not leave.
        if is_database_outage(err):
            await deps.sends.unmark_sending(message_id, job.attempt, f"before sending: {err!r}")
        raise
    status: Literal["sent", "logged"] = "logged" if result.status == "logged" else "sent"
    if converted is not None:
        result = replace(result, meta={**result.meta, "converted_to_template": converted})
    if extra:
        result = replace(result, meta={**extra, **result.meta})
    await deps.sends.record_sent(
        message_id,
        job.attempt,
        status=status,
        provider_message_id=result.provider_message_id,
        meta=result.meta,
    )
    if converted is not None:
        try:
            await deps.repo.add_event(
                params.company_id,
                params.lead_id,
                "message.converted_to_template",
                {"message_id": str(message_id), "channel": params.channel, **converted},
            )
        except Exception as err:  # the send is recorded; the event is a footnote
            log.warning("converted_event_failed", error=type(err).__name__)
    SENDS.labels(params.channel, status).inc()
    log.info("send_done", message_id=str(message_id), channel=params.channel, status=result.status)
    return {"status": result.status, "provider_message_id": result.provider_message_id}


async def _attempt(
    params: SendParams, message_id: uuid.UUID, deps: Deps, template_id: uuid.UUID | None
) -> SendResult:
    """One call to the channel, with the refusals that change state beyond this send handled."""
    if template_id != params.template_id:
        # A converted send: the template takes its parameters from the lead, not the caller.
        params = params.model_copy(update={"template_id": template_id, "template_params": []})
    try:
        return await deps.router.send(
            params.to,
            params.text,
            params.channel,
            template_id,
            message_id=message_id,
            params=params,
        )
    except RecipientOptedOutError as err:
        await deps.policies.suppress(params, err)
        raise
    except UndeliverableError as err:
        await deps.policies.flag_undeliverable(params, err)
        raise
    except ChannelPausedError as err:
        raise await deps.policies.pause(params, message_id, err) from err
    except AccountPausedError as err:
        raise await deps.policies.pause_account(params, err) from err
