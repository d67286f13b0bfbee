"""The request and response models of the sequences admin API (`sequences_api`), with the
examples its interactive docs show. A step read back (GET) may be sent back as it is (PUT): the
read-only fields it carries are dropped on the way in."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from shvya_common.contracts.jobs import Channel
from shvya_common.sequences.steps import MAX_STEPS, Step
from shvya_ingest import examples as ex

MAX_ENROL = 5000
# Read-only fields of a step as GET shows it: a step read back may be sent back as it is.
STEP_OUTPUT_ONLY = ("position", "version", "updated_at")

EXAMPLE_STEPS: list[JsonValue] = [
    {
        "key": "hello",
        "kind": "send",
        "text": "Hi {{ lead.first_name }}! Still thinking about solar?",
    },
    {"kind": "wait", "seconds": 86400},
    {
        "kind": "condition",
        "condition": {"type": "stage_is", "stage": "Qualified"},
        "then": "end",
        "else": "next",
    },
    {
        "kind": "wait",
        "seconds": 172800,
        "until": {"weekdays": ["mon", "tue", "wed", "thu", "fri"], "time": "10:00"},
    },
    {"kind": "send", "channel": "email", "text": "Here is our price list, {{ lead.first_name }}."},
    {"kind": "move_stage", "stage": "Contacted"},
]


def _strip_output_fields(steps: Any) -> Any:
    if isinstance(steps, list):
        return [
            {k: v for k, v in s.items() if k not in STEP_OUTPUT_ONLY} if isinstance(s, dict) else s
            for s in steps
        ]
    return steps


class SequenceIn(BaseModel):
    """A sequence and its ordered steps."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "New lead nurture",
                    "channel": "whatsapp_cloud",
                    "on_reply": "stop",
                    "steps": EXAMPLE_STEPS,
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    channel: Channel = Field(description="The channel of send steps that name none.")
    on_reply: Literal["stop", "pause"] = Field(
        "stop",
        description="When the lead replies on any channel: stop its enrolment, or pause it "
        "until the conversation has been quiet for resume_after_quiet_seconds.",
    )
    resume_after_quiet_seconds: int = Field(86_400, ge=1, le=30 * 86_400)
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    _strip = field_validator("steps", mode="before")(_strip_output_fields)


class SequencePatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"on_reply": "pause", "resume_after_quiet_seconds": 7200}]},
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    channel: Channel | None = None
    on_reply: Literal["stop", "pause"] | None = None
    resume_after_quiet_seconds: int | None = Field(None, ge=1, le=30 * 86_400)


class StepsIn(BaseModel):
    """The new ordered steps. A step keeps its identity (and history) by its `id` or `key`;
    a stored step missing here is removed, and leads waiting on it move to the next one."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"steps": EXAMPLE_STEPS[:2]}]}
    )

    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    _strip = field_validator("steps", mode="before")(_strip_output_fields)


class SequenceOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.SEQUENCE_ID,
                "company_id": ex.COMPANY_ID,
                "name": "Solar follow-up",
                "description": "Two touches for leads that went quiet",
                "channel": "whatsapp_cloud",
                "on_reply": "stop",
                "resume_after_quiet_seconds": 86400,
                "version": 2,
                "archived_at": None,
                "created_at": ex.CREATED,
                "updated_at": ex.UPDATED,
                "enrolments": {"active": 14, "completed": 3, "stopped": 1},
                "steps": [
                    {
                        "id": ex.STEP_IDS[0],
                        "key": "hello",
                        "kind": "send",
                        "text": "Hi {{ lead.first_name }}!",
                        "position": 1,
                        "version": 1,
                    },
                    {
                        "id": ex.STEP_IDS[1],
                        "kind": "wait",
                        "seconds": 86400,
                        "position": 2,
                        "version": 2,
                    },
                ],
            }
        )
    )

    id: uuid.UUID
    company_id: uuid.UUID
    name: str
    description: str | None
    channel: str
    on_reply: str
    resume_after_quiet_seconds: int
    version: int
    archived_at: datetime | None
    created_at: datetime
    updated_at: datetime
    enrolments: dict[str, int] = Field(description="Enrolments by status.")
    steps: list[dict[str, Any]] = Field(
        description="In order: each step as it was given, with its id, position and version."
    )


class SequenceList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"sequences": [ex.example_of(SequenceOut)], "total": 1, "limit": 100, "offset": 0}
        )
    )

    sequences: list[SequenceOut]
    total: int
    limit: int
    offset: int


class MovedOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"enrolment_id": ex.ENROLMENT_ID, "from_step": "hello", "to_step": ex.STEP_IDS[1]}
        )
    )

    enrolment_id: uuid.UUID
    from_step: str
    to_step: str | None = Field(description="None: the enrolment completes at its next run.")


class EditOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"sequence": ex.example_of(SequenceOut), "moved": [ex.example_of(MovedOut)]}
        )
    )

    sequence: SequenceOut
    moved: list[MovedOut] = Field(description="Enrolments moved off removed steps.")


class LeadFilter(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    phone_number: str | None = Field(
        None, max_length=64, description="The lead with this phone number (any format with +)."
    )
    email: str | None = Field(None, max_length=254, description="The lead with this address.")
    stage: str | None = Field(None, min_length=1, max_length=200, description="A stage name.")
    attributes: dict[str, Any] | None = Field(
        None, description="Attributes the lead must have (JSON containment)."
    )
    last_activity_before: datetime | None = Field(
        None, description="Last message (either way) before this moment; never: created before."
    )
    last_activity_after: datetime | None = None
    limit: int = Field(1000, ge=1, le=MAX_ENROL, description="Leads enrolled per call.")


class EnrolIn(BaseModel):
    """Exactly one of `lead_id`, `lead_ids` and `filter`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"lead_id": "7f1c2f6e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"},
                {"filter": {"stage": "New", "last_activity_before": "2025-01-01T00:00:00Z"}},
            ]
        },
    )

    lead_id: uuid.UUID | None = None
    lead_ids: list[uuid.UUID] | None = Field(None, min_length=1, max_length=MAX_ENROL)
    filter: LeadFilter | None = None
    start_at: datetime | None = Field(None, description="When the first step runs; default now.")

    @model_validator(mode="after")
    def _one_audience(self) -> EnrolIn:
        given = [self.lead_id is not None, self.lead_ids is not None, self.filter is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of 'lead_id', 'lead_ids' and 'filter'")
        return self


class EnrolledLead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples({"enrolment_id": ex.ENROLMENT_ID, "lead_id": ex.LEAD_ID})
    )

    enrolment_id: uuid.UUID
    lead_id: uuid.UUID


class EnrolOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "enrolled": 1,
                "already_enrolled": 1,
                "suppressed": 1,
                "enrolments": [ex.example_of(EnrolledLead)],
                "already_enrolled_lead_ids": [ex.DUPLICATE_LEAD_ID],
                "suppressed_lead_ids": ["0190f3b0-3e4f-7051-8c6d-7e8f9a0b1c2e"],
            }
        )
    )

    enrolled: int
    already_enrolled: int
    suppressed: int = Field(description="Leads with a suppression on an address: not enrolled.")
    enrolments: list[EnrolledLead]
    already_enrolled_lead_ids: list[uuid.UUID]
    suppressed_lead_ids: list[uuid.UUID]


class StepRef(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples({"id": ex.STEP_IDS[1], "key": None, "kind": "wait"})
    )

    id: uuid.UUID
    key: str | None
    kind: str | None


class HistoryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "at": ex.CREATED,
                "run": 1,
                "kind": "step",
                "step_id": ex.STEP_IDS[0],
                "step_key": "hello",
                "step_version": 1,
                "action": "send",
                "outcome": "requested",
                "detail": {"channel": "whatsapp_cloud"},
                "message_id": ex.MESSAGE_ID,
                "message_status": "sent",
            }
        )
    )

    at: datetime
    run: int
    kind: str
    step_id: uuid.UUID | None
    step_key: str | None
    step_version: int | None
    action: str | None
    outcome: str | None
    detail: dict[str, Any]
    message_id: uuid.UUID | None
    message_status: str | None = Field(description="The requested message's send status now.")


class EnrolmentOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "id": ex.ENROLMENT_ID,
                "sequence_id": ex.SEQUENCE_ID,
                "lead_id": ex.LEAD_ID,
                "status": "active",
                "current_step": {"id": ex.STEP_IDS[1], "key": None, "kind": "wait"},
                "next_run_at": ex.LATER,
                "run": 1,
                "source": "lead",
                "stop_reason": None,
                "enrolled_at": ex.CREATED,
                "paused_at": None,
                "resumed_at": None,
                "finished_at": None,
                "updated_at": ex.UPDATED,
            }
        )
    )

    id: uuid.UUID
    sequence_id: uuid.UUID
    lead_id: uuid.UUID
    status: str
    current_step: StepRef | None = Field(description="The next step to run; None: the end.")
    next_run_at: datetime | None
    run: int
    source: str
    stop_reason: str | None
    enrolled_at: datetime
    paused_at: datetime | None
    resumed_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @classmethod
    def of(cls, row: asyncpg.Record) -> EnrolmentOut:
        current = (
            StepRef(
                id=row["current_step_id"],
                key=row["current_step_key"],
                kind=row["current_step_kind"],
            )
            if row["current_step_id"] is not None
            else None
        )
        fields = {k: row[k] for k in cls.model_fields if k != "current_step"}
        return cls(**fields, current_step=current)


class EnrolmentDetail(EnrolmentOut):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {**ex.example_of(EnrolmentOut), "history": [ex.example_of(HistoryOut)]}
        )
    )

    history: list[HistoryOut]


class EnrolmentList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {"enrolments": [ex.example_of(EnrolmentOut)], "total": 1, "limit": 100, "offset": 0}
        )
    )

    enrolments: list[EnrolmentOut]
    total: int
    limit: int
    offset: int


class PreviewIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra=ex.examples({"lead_id": ex.LEAD_ID})
    )
    lead_id: uuid.UUID


class PreviewStep(BaseModel):
    model_config = ConfigDict(
        json_schema_extra=ex.examples(
            {
                "key": "hello",
                "channel": "whatsapp_cloud",
                "to": ex.PHONE,
                "text": "Hi Ana! Still thinking about solar?",
                "template_params": [],
                "error": None,
            }
        )
    )

    key: str
    channel: str
    to: str | None
    text: str | None
    template_params: list[str]
    error: str | None = Field(description="Why this step would not send for this lead.")


class OptOutSettings(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra=ex.examples({"across_channels": True})
    )

    across_channels: bool = Field(
        description="An opt-out on one channel suppresses marketing to all of the lead's "
        "addresses (on by default)."
    )
