"""What an email campaign is, shared by the API that defines it (ingest) and the runs that send
it (the scheduler's `email.sequence`): its template, audience and send window, how a template
renders for one lead, and when a window is open in a lead's time zone.

- **Template**: a subject, a text part and an optional HTML part, each Jinja2 in the sandbox
  with `StrictUndefined` (`shvya_common.render`), so a field a lead lacks fails the preview
  with its name instead of mailing "Hi ,".
- **Audience**: a filter over the company's leads that have an email address (stages,
  attributes, creation and activity dates, explicit ids), turned into recipients once, when
  the campaign starts (`AUDIENCE_SQL`, parameters only).
- **Send window**: weekdays and a start–end time on each lead's own wall clock (the lead's
  zone, else the company's, else UTC); `None` means any time. A window whose end is before its
  start runs past midnight; equal start and end mean the whole day.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_serializer, field_validator

from shvya_common.bus import Unit
from shvya_common.contracts.jobs import CampaignParams
from shvya_common.cron import zone
from shvya_common.render import (
    RenderError,
    check_syntax,
    lead_context,
    render_html,
    render_text,
)

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_SUBJECT_CHARS = 300


class CampaignTemplate(BaseModel):
    """The three parts of the email, each a Jinja2 template over `lead` and `company`."""

    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=1000, examples=["{{ lead.first_name }}, spring"])
    text: str = Field(
        min_length=1,
        max_length=100_000,
        examples=["Hi {{ lead.first_name }},\n\nOur spring offer: https://example.com/spring"],
    )
    html: str | None = Field(
        None,
        max_length=100_000,
        description="Optional; without it the HTML part is made from the text part.",
        examples=[
            '<p>Hi {{ lead.first_name }},</p><p><a href="https://example.com/spring">'
            "Our spring offer</a></p>"
        ],
    )

    def check_syntax(self) -> None:
        """Raise RenderError (naming the part) if a part does not parse."""
        for part, source, html in self._parts():
            try:
                check_syntax(source, html=html)
            except RenderError as err:
                raise RenderError(f"{part}: {err}") from err

    def _parts(self) -> list[tuple[str, str, bool]]:
        parts = [("subject", self.subject, False), ("text", self.text, False)]
        if self.html is not None:
            parts.append(("html", self.html, True))
        return parts


class Audience(BaseModel):
    """Which of the company's leads with an email address the campaign reaches (all of them
    when every field is empty); the conditions combine with AND."""

    model_config = ConfigDict(extra="forbid")

    stages: list[str] = Field(
        default_factory=list, max_length=100, description="Stage names (any pipeline)."
    )
    attributes: dict[str, Any] = Field(
        default_factory=dict,
        description="Leads whose attributes contain these (JSON containment).",
        examples=[{"plan": "trial"}],
    )
    lead_ids: list[uuid.UUID] = Field(default_factory=list, max_length=100_000)
    created_after: datetime | None = None
    created_before: datetime | None = None
    active_within_days: int | None = Field(
        None, ge=1, le=3650, description="Leads who wrote or were written to in these days."
    )

    def sql_args(self) -> list[Any]:
        """The parameters $2.. of AUDIENCE_SQL, in order."""
        return [
            self.stages or None,
            self.attributes or None,
            list(self.lead_ids) or None,
            self.created_after,
            self.created_before,
            self.active_within_days,
        ]


# Leads of company $1 with an email address that match the audience, with the zone their window
# is read in. Every condition is a parameter; NULL leaves it out.
AUDIENCE_WHERE = """
l.company_id = $1 AND l.email IS NOT NULL AND l.email <> ''
AND ($2::text[] IS NULL OR EXISTS (SELECT 1 FROM stages s WHERE s.id = l.stage_id
                                   AND s.name = ANY($2::text[])))
AND ($3::jsonb IS NULL OR l.attributes @> $3::jsonb)
AND ($4::uuid[] IS NULL OR l.id = ANY($4::uuid[]))
AND ($5::timestamptz IS NULL OR l.created_at >= $5)
AND ($6::timestamptz IS NULL OR l.created_at < $6)
AND ($7::int IS NULL OR greatest(l.last_inbound_at, l.last_outbound_at)
                        >= now() - make_interval(days => $7::int))
"""

AUDIENCE_COUNT_SQL = f"SELECT count(*) FROM leads l WHERE {AUDIENCE_WHERE}"


# A wall-clock time as "HH:MM" on the wire: JSON Schema's `time` format demands a zone offset,
# which a window on each lead's own clock must not have.
WallClock = Annotated[
    time,
    WithJsonSchema(
        {"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$", "examples": ["09:00"]}
    ),
]


class SendWindow(BaseModel):
    """When campaign mail may leave, on each lead's own wall clock."""

    model_config = ConfigDict(extra="forbid")

    days: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS), min_length=1, examples=[["mon", "tue", "wed"]]
    )
    start: WallClock = time(9, 0)
    end: WallClock = Field(time(17, 0), description="Exclusive; 00:00 = midnight.")

    @field_validator("days")
    @classmethod
    def _unique(cls, value: list[Weekday]) -> list[Weekday]:
        return sorted(set(value), key=WEEKDAYS.index)

    @field_validator("start", "end")
    @classmethod
    def _minutes(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("give a wall-clock time without a zone (each lead's zone applies)")
        return value.replace(second=0, microsecond=0)

    @field_serializer("start", "end")
    def _hhmm(self, value: time) -> str:
        return value.strftime("%H:%M")

    def _on(self, day: date) -> bool:
        return WEEKDAYS[day.weekday()] in self.days

    def is_open(self, tz: ZoneInfo, now: datetime) -> bool:
        """Whether a lead in `tz` may be mailed at `now`."""
        local = now.astimezone(tz)
        t = local.time().replace(tzinfo=None)
        today, yesterday = local.date(), local.date() - timedelta(days=1)
        if self.start == self.end:
            return self._on(today)
        if self.start < self.end:
            return self._on(today) and self.start <= t < self.end
        # Past midnight: the evening part belongs to today, the small hours to yesterday.
        return (self._on(today) and t >= self.start) or (self._on(yesterday) and t < self.end)

    def next_open(self, tz: ZoneInfo, now: datetime) -> datetime:
        """The first instant at or after `now` when the window is open in `tz` (UTC)."""
        if self.is_open(tz, now):
            return now
        local_today = now.astimezone(tz).date()
        for offset in range(0, 9):
            day = local_today + timedelta(days=offset)
            if not self._on(day):
                continue
            # A start that the clock skips (DST) resolves later by the gap, as zoneinfo does.
            opening = datetime.combine(day, self.start, tzinfo=tz).astimezone(UTC)
            if opening >= now:
                return opening
        raise ValueError("the send window never opens")  # unreachable: days has one entry


@dataclass(frozen=True)
class ZonePlan:
    """Which of the zones with pending recipients are open now, and when the next one opens."""

    open: list[str]
    next_open: datetime | None


def plan_zones(
    window: SendWindow | None, zones: Iterable[str], now: datetime, fallback: str
) -> ZonePlan:
    """Split the recipients' zones (as stored) into open ones and the next opening."""
    names = sorted(set(zones))
    if window is None:
        return ZonePlan(names, None)
    opened: list[str] = []
    soonest: datetime | None = None
    for name in names:
        tz = zone(name, fallback)
        if window.is_open(tz, now):
            opened.append(name)
        else:
            at = window.next_open(tz, now)
            soonest = at if soonest is None or at < soonest else soonest
    return ZonePlan(opened, soonest)


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str | None


def render_campaign(
    template: CampaignTemplate, lead: Mapping[str, Any], company: Mapping[str, Any]
) -> RenderedEmail:
    """The template rendered for one lead; raises RenderError naming the part and the field."""
    context = lead_context(lead, company)
    out: dict[str, str | None] = {"html": None}
    for part, source, html in template._parts():
        try:
            out[part] = render_html(source, context) if html else render_text(source, context)
        except RenderError as err:
            raise RenderError(f"{part}: {err}") from err
    subject = " ".join((out["subject"] or "").split())
    if not subject:
        raise RenderError("subject: renders empty for this lead")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise RenderError(f"subject: longer than {MAX_SUBJECT_CHARS} characters for this lead")
    text = out["text"] or ""
    if not text.strip():
        raise RenderError("text: renders empty for this lead")
    return RenderedEmail(subject, text, out["html"])


def send_key(campaign_id: uuid.UUID, lead_id: uuid.UUID) -> str:
    """The one send a lead gets from a campaign (messages are unique by it)."""
    return f"campaign:{campaign_id}:{lead_id}"


def run_key(campaign_id: uuid.UUID, run: int) -> str:
    """The idempotency key of a campaign's run number `run`."""
    return f"campaign:{campaign_id}:run:{run}"


_START = """
UPDATE campaigns
SET status = 'sending', run_seq = run_seq + 1, started_at = coalesce(started_at, now()),
    paused_at = NULL, completed_at = NULL, updated_at = now()
WHERE id = $1 AND status = ANY($2::text[])
RETURNING run_seq, company_id
"""


async def start_runs(
    unit: Unit, campaign_id: uuid.UUID, from_statuses: list[str], *, at: datetime | None = None
) -> int | None:
    """Move the campaign to 'sending' and enqueue the first run of a new chain (at `at`, or
    now), in the caller's unit of work; returns the run's number, or None if the campaign was
    not in one of `from_statuses`. Bumping `run_seq` retires any earlier chain."""
    row = await unit.conn.fetchrow(_START, campaign_id, from_statuses)
    if row is None:
        return None
    run: int = row["run_seq"]
    await unit.enqueue_job(
        "email.sequence",
        CampaignParams(campaign_id=campaign_id, run=run),
        run_key(campaign_id, run),
        company_id=row["company_id"],
        run_at=at,
    )
    return run
