"""The job envelope and the parameters of each task.

The task table keeps the original design's names and priorities: conversational work (P1,
90–100) always starts before scheduled work (P2, 50–70).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

Channel = Literal["whatsapp_cloud", "whatsapp_web", "email", "log"]
CHANNELS: tuple[str, ...] = ("whatsapp_cloud", "whatsapp_web", "email", "log")


class JobEnvelope(BaseModel):
    """What travels on a job subject: the job's identity, its task and its parameters."""

    model_config = ConfigDict(frozen=True)

    # The job's id; for a send, the outbound message's id.
    job_id: UUID
    task: str
    priority: int
    params: dict[str, Any]
    company_id: UUID | None = None
    lead_id: UUID | None = None
    # Bumped each time the row is put back on the queue (a timer firing, a replay, the
    # reconciler finding its message gone); with the id it is the message's Nats-Msg-Id, so a
    # republish of the same generation is de-duplicated and a new generation always goes through.
    generation: int = 0
    enqueued_at: datetime


class EngageParams(BaseModel):
    """ai.engage: answer one inbound message."""

    lead_id: UUID
    message_id: UUID
    # Set when the customer edited the message and the company answers edits: the n-th edit
    # gets its own reply (send key `reply:<message_id>:edit:<n>`).
    revision: int | None = Field(None, ge=1)


class SummaryParams(BaseModel):
    """ai.summary: summarise a lead's conversation into lead.attributes['summary']."""

    lead_id: UUID
    reason: Literal["api", "quiet", "manual", "schedule"] = "api"


class BumpupParams(BaseModel):
    """followup.bumpup: nudge a lead that went silent after our last message."""

    lead_id: UUID
    bump_number: int = Field(1, ge=1)


class SequenceStepParams(BaseModel):
    """sequence.step: run an enrolment's due steps, or see whether a paused one may resume."""

    enrolment_id: UUID
    # The enrolment's run this job was scheduled for; once the enrolment has moved on (paused,
    # stopped, rescheduled), a job of an older run does nothing.
    run: int = Field(ge=0)


class AiMeta(BaseModel):
    """Where a generated text came from, kept on the outbound message."""

    responder: Literal["openai", "offline"]
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sources: list[str] = Field(default_factory=list)


class SendParams(BaseModel):
    """dispatch.send: deliver one text (or template) to one lead on one channel, once."""

    company_id: UUID
    lead_id: UUID
    channel: Channel
    to: str
    text: str
    template_id: UUID | None = None
    template_params: list[str] = Field(default_factory=list)
    # The logical identity of this send; the outbound message is unique by it.
    send_key: str
    # optout_confirmation is the one send allowed to a lead that just opted out.
    # agent: typed by a person through the API (hand-off), not generated.
    purpose: Literal[
        "reply", "followup", "marketing", "notification", "optout_confirmation", "agent"
    ] = "reply"
    reply_to_message_id: UUID | None = None
    ai: AiMeta | None = None
    # Not before this moment: the policy engine defers the send until then (e.g. WhatsApp's
    # 131049 asks for a retry no sooner than 24 h later).
    not_before: datetime | None = None
    # The provider id of the message this one answers, shown as a quoted reply (WhatsApp's
    # `context.message_id`).
    context_message_id: str | None = Field(None, max_length=256)
    # Email only, both optional: a subject and an HTML part written for this send (a campaign's
    # rendered template). Without them the channel picks the subject and makes the HTML from
    # `text`, as for replies.
    subject: str | None = None
    html: str | None = None


class MediaFetchParams(BaseModel):
    """media.fetch: download one received attachment with the channel's credentials and store
    it (the `inbound_media` row says which)."""

    media_row_id: UUID
    company_id: UUID
    message_id: UUID


class WebhookParams(BaseModel):
    """webhook.reminder: make one outbound webhook delivery (`kind` 'delivery': POST the event
    of `webhook_deliveries` row `delivery_id` to its endpoint), or fire one reminder (`kind`
    'reminder': record `reminder.due` for `reminders` row `reminder_id` at its `version`, which
    then fans out to the endpoints subscribed to it like any event)."""

    kind: Literal["delivery", "reminder"]
    delivery_id: UUID | None = None
    reminder_id: UUID | None = None
    # A reminder that was rescheduled has a newer version; the older job finds it and stops.
    version: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _names_its_row(self) -> WebhookParams:
        if self.kind == "delivery" and self.delivery_id is None:
            raise ValueError("a delivery names its delivery_id")
        if self.kind == "reminder" and self.reminder_id is None:
            raise ValueError("a reminder names its reminder_id")
        return self


class CampaignParams(BaseModel):
    """email.sequence: one run of a campaign. A `run` takes the next batch of its pending
    recipients within the send window and rate, requests their sends, and enqueues the next
    run; a `refresh` (a schedule firing) adds the leads that newly match the audience and
    starts the campaign again if it had finished."""

    campaign_id: UUID
    action: Literal["run", "refresh"] = "run"
    # The run's number in the campaign's chain; a run that is not the current one does nothing.
    run: int = Field(0, ge=0)


ReportName = Literal["funnel", "response_times", "volumes", "ai_vs_human"]
REPORTS: tuple[ReportName, ...] = ("funnel", "response_times", "volumes", "ai_vs_human")


class ReportParams(BaseModel):
    """report.refresh: compute a company's reports into report_caches."""

    company_id: UUID
    reports: list[ReportName] = Field(default_factory=lambda: list(REPORTS))
    days: int = Field(30, ge=1, le=366)


class WhatsAppWebInboundParams(BaseModel):
    """whatsapp_web.inbound: one thing a linked WhatsApp Web account saw, for ingest to file
    through the path every inbound message takes. `kind` is 'message' (text, caption, reply),
    'reaction', 'ack' (delivery/read of our messages), 'edit', 'revoke', or a later kind that
    ingest keeps as an event; `item` is what the page reported (shvya_dispatch's bridge)."""

    account: str = Field(min_length=1, max_length=64)
    company_id: UUID
    kind: str = Field(min_length=1, max_length=40)
    item: dict[str, Any]


@dataclass(frozen=True)
class TaskSpec:
    """A task's default priority and the service whose workers run it.

    Every task here must have a handler registered in its service (`shvya_common.bus.registry`);
    a service refuses to start otherwise, so no task can sit queued with nobody to run it.
    """

    name: str
    priority: int
    service: str
    params: type[BaseModel] | None
    # Where the job's durable state lives: the jobs table, or (for sends) the outbound
    # message row itself, so a reply is one job plus one message, as in the original.
    ledger: Literal["jobs", "messages"] = "jobs"


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("ai.engage", 100, "engage", EngageParams),
        TaskSpec("followup.bumpup", 95, "engage", BumpupParams),
        TaskSpec("ai.summary", 90, "engage", SummaryParams),
        TaskSpec("sequence.step", 70, "scheduler", SequenceStepParams),
        # Sends inherit the priority of the job that asked for them; 100 is the default.
        TaskSpec("dispatch.send", 100, "dispatch", SendParams, ledger="messages"),
        # Below sends: a download never delays a reply.
        TaskSpec("media.fetch", 90, "dispatch", MediaFetchParams),
        TaskSpec("webhook.reminder", 50, "dispatch", WebhookParams),
        TaskSpec("email.sequence", 60, "scheduler", CampaignParams),
        TaskSpec("report.refresh", 50, "scheduler", ReportParams),
        # What a linked WhatsApp Web account receives, filed by ingest as soon as it arrives.
        TaskSpec("whatsapp_web.inbound", 100, "ingest", WhatsAppWebInboundParams),
    )
}


SERVICES: tuple[str, ...] = ("ingest", "engage", "dispatch", "scheduler")


def task_spec(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}"
        ) from None
