"""What a sequence is made of: the kinds of step, how a list of them is checked, how a step is
stored, and the parts of running one that need no database (when a wait ends, whether an
attribute matches).

    send        a text (Jinja2, personalised per lead) or a template, on a channel, via dispatch
    wait        a duration, and/or until the next of some weekdays at a time in the lead's zone
    condition   replied since enrolment, stage is / is not, an attribute matches, one of this
                enrolment's emails was opened / clicked; `then` and `else` each go to "next",
                "end" or another step's key
    move_stage  put the lead in a stage (by name) of its pipeline
    end         finish the enrolment

Every step has a `key`, unique in its sequence (given, or `step-<n>`), which is how branches
name their targets and how an edit recognises a step it keeps. A list of steps is refused when
a branch names a missing key or when the steps can loop without passing a wait (a send or a
stage move repeated as fast as the queue runs).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from shvya_common.contracts.jobs import Channel

KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NEXT, END = "next", "end"
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
MAX_STEPS = 100
MAX_WAIT_SECONDS = 366 * 86_400
_PARSER = SandboxedEnvironment()


def _check_template(text: str) -> str:
    try:
        _PARSER.parse(text)
    except TemplateSyntaxError as err:
        raise ValueError(f"the text does not parse as a template: {err.message}") from err
    return text


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)

    id: uuid.UUID | None = Field(
        None, description="On an edit: the stored step this one is (else matched by `key`)."
    )
    key: str | None = Field(
        None,
        pattern=KEY_PATTERN,
        description="Unique in the sequence; branches name steps by it. Default `step-<n>`.",
    )


class SendStep(_Step):
    """Send a personalised text, or a template, to the lead on a channel (through dispatch)."""

    kind: Literal["send"] = "send"
    channel: Channel | None = Field(None, description="Defaults to the sequence's channel.")
    text: str | None = Field(
        None,
        min_length=1,
        max_length=16_384,
        description="Jinja2, e.g. 'Hi {{ lead.first_name }}'; fields: lead.*, company.*.",
    )
    template_id: uuid.UUID | None = Field(
        None, description="A template of the company (WhatsApp outside the 24 h window; email)."
    )
    template_params: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=20,
        description="Values for the template's {{1}}, {{2}}, ...; each is Jinja2 too.",
    )

    @field_validator("text")
    @classmethod
    def _text_parses(cls, value: str | None) -> str | None:
        return None if value is None else _check_template(value)

    @field_validator("template_params")
    @classmethod
    def _params_parse(cls, values: list[str]) -> list[str]:
        return [_check_template(v) for v in values]

    @model_validator(mode="after")
    def _text_or_template(self) -> SendStep:
        if self.text is None and self.template_id is None:
            raise ValueError("a send step needs 'text' or 'template_id'")
        return self


def _every_day() -> list[Weekday]:
    return ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Until(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weekdays: list[Weekday] = Field(
        default_factory=_every_day,
        min_length=1,
        description="Default: any day.",
    )
    time: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="Local time, HH:MM.")


class WaitStep(_Step):
    """Wait `seconds`, then (with `until`) on to the next listed weekday at `time`, in the
    lead's time zone (else the company's, else UTC)."""

    kind: Literal["wait"] = "wait"
    seconds: int | None = Field(None, ge=0, le=MAX_WAIT_SECONDS)
    until: Until | None = None

    @model_validator(mode="after")
    def _something_to_wait_for(self) -> WaitStep:
        if self.seconds is None and self.until is None:
            raise ValueError("a wait step needs 'seconds', 'until' or both")
        return self


class Replied(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["replied"]


class StageIs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["stage_is", "stage_is_not"]
    stage: str = Field(min_length=1, max_length=200, description="A stage name (any case).")


class AttributeMatches(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["attribute"]
    name: str = Field(
        min_length=1, max_length=200, description="A key of lead.attributes; 'a.b' for nested."
    )
    op: Literal["eq", "ne", "exists", "not_exists", "contains", "in", "gt", "gte", "lt", "lte"] = (
        "eq"
    )
    value: Any = None

    @model_validator(mode="after")
    def _value_fits(self) -> AttributeMatches:
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError("op 'in' needs a list 'value'")
        if self.op not in ("exists", "not_exists") and self.value is None:
            raise ValueError(f"op {self.op!r} needs a 'value'")
        return self


class EmailEngaged(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["email_opened", "email_clicked"]
    include_machine: bool = Field(
        False, description="Count opens and clicks by mail proxies and security scanners too."
    )


Condition = Annotated[
    Replied | StageIs | AttributeMatches | EmailEngaged, Field(discriminator="type")
]


class ConditionStep(_Step):
    """Check something about the lead; go to `then` when it holds, else to `else`."""

    kind: Literal["condition"] = "condition"
    condition: Condition
    then: str = Field(NEXT, description="'next', 'end' or a step key.")
    else_: str = Field(NEXT, alias="else", description="'next', 'end' or a step key.")


class MoveStageStep(_Step):
    """Put the lead in the stage of this name in its pipeline (else the company's default)."""

    kind: Literal["move_stage"] = "move_stage"
    stage: str = Field(min_length=1, max_length=200)


class EndStep(_Step):
    """Finish the enrolment here."""

    kind: Literal["end"] = "end"


Step = Annotated[
    SendStep | WaitStep | ConditionStep | MoveStageStep | EndStep, Field(discriminator="kind")
]
AnyStep = SendStep | WaitStep | ConditionStep | MoveStageStep | EndStep
STEP = TypeAdapter(Step)


class StepsError(ValueError):
    """A list of steps that cannot run as given; the message says why."""


def with_keys(steps: Sequence[AnyStep]) -> list[AnyStep]:
    """The steps with every key set (`step-<n>` where none was given), checked for duplicates."""
    given = [s.key for s in steps if s.key is not None]
    duplicates = sorted({k for k in given if given.count(k) > 1})
    if duplicates:
        raise StepsError(f"step keys must be unique; repeated: {', '.join(duplicates)}")
    if any(k in (NEXT, END) for k in given):
        raise StepsError("'next' and 'end' are branch targets, not step keys")
    taken = set(given)
    out = []
    for n, step in enumerate(steps, start=1):
        if step.key is None:
            key, extra = f"step-{n}", 1
            while key in taken:
                extra += 1
                key = f"step-{n}-{extra}"
            taken.add(key)
            step = step.model_copy(update={"key": key})
        out.append(step)
    return out


def successors(steps: Sequence[AnyStep], index: int) -> list[int]:
    """Where the step at `index` may go next (indices; len(steps) or -1 mean the end)."""
    step = steps[index]
    if isinstance(step, EndStep):
        return []
    if isinstance(step, ConditionStep):
        return [target_index(steps, index, t) for t in (step.then, step.else_)]
    return [index + 1]


def target_index(steps: Sequence[AnyStep], index: int, target: str) -> int:
    if target == NEXT:
        return index + 1
    if target == END:
        return -1
    for n, step in enumerate(steps):
        if step.key == target:
            return n
    raise StepsError(f"step {steps[index].key!r} branches to {target!r}, which is no step key")


def check_steps(steps: Sequence[AnyStep]) -> list[AnyStep]:
    """Keys set and unique, branch targets known, and no loop that skips every wait step."""
    if not steps:
        raise StepsError("a sequence needs at least one step")
    if len(steps) > MAX_STEPS:
        raise StepsError(f"a sequence has at most {MAX_STEPS} steps")
    keyed = with_keys(steps)
    graph = {i: [j for j in successors(keyed, i) if 0 <= j < len(keyed)] for i in range(len(keyed))}
    # A cycle through non-wait steps only would run (and send) as fast as the queue allows.
    state: dict[int, int] = {}

    def visit(node: int, path: list[int]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if isinstance(keyed[nxt], WaitStep):
                continue
            if state.get(nxt) == 1:
                loop = [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
                names = " → ".join(str(keyed[i].key) for i in loop)
                raise StepsError(f"steps {names} loop without a wait step")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in range(len(keyed)):
        if start not in state and not isinstance(keyed[start], WaitStep):
            visit(start, [start])
    return keyed


# --- storage: the original's columns where they fit, the rest in `config` ---

_COLUMN_FIELDS = {"id", "kind", "key", "channel", "text", "template_id", "seconds"}


def step_columns(step: AnyStep) -> dict[str, Any]:
    """The row of a step: action, key, channel, body, template_id, delay_seconds, config."""
    data = step.model_dump(mode="json", by_alias=True, exclude_none=True)
    config = {k: v for k, v in data.items() if k not in _COLUMN_FIELDS}
    return {
        "action": step.kind,
        "key": step.key,
        "channel": getattr(step, "channel", None),
        "body": getattr(step, "text", None),
        "template_id": getattr(step, "template_id", None),
        "delay_seconds": getattr(step, "seconds", None) or 0,
        "config": config,
    }


def step_from_row(row: Mapping[str, Any]) -> AnyStep:
    """The step a `sequence_steps` row holds."""
    data: dict[str, Any] = {
        "id": row.get("id"),
        "kind": row["action"],
        "key": row["key"],
        **(row["config"] or {}),
    }
    if row["action"] == "send":
        data.update(channel=row["channel"], text=row["body"], template_id=row["template_id"])
        if data["text"] is None and data["template_id"] is None:
            # Its template was deleted (ON DELETE SET NULL): still readable, skipped at run time.
            return SendStep.model_construct(
                id=row.get("id"),
                key=row["key"],
                channel=row["channel"],
                text=None,
                template_id=None,
                template_params=data.get("template_params", []),
            )
    elif row["action"] == "wait":
        if row["delay_seconds"] or "until" not in data:
            data["seconds"] = row["delay_seconds"]
    model: AnyStep = STEP.validate_python({k: v for k, v in data.items() if v is not None})
    return model


# --- running ---


def zone_named(*names: str | None) -> ZoneInfo:
    """The first valid IANA time zone among `names`, else UTC."""
    for name in names:
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def wait_until(step: WaitStep, now: datetime, zone: ZoneInfo) -> datetime:
    """When a wait that starts at `now` ends: `seconds` later, then with `until` the first
    listed weekday at its local time strictly after that."""
    due = now + timedelta(seconds=step.seconds or 0)
    if step.until is None:
        return due
    hour, minute = (int(part) for part in step.until.time.split(":"))
    local = due.astimezone(zone)
    for days in range(8):
        day = local.date() + timedelta(days=days)
        if WEEKDAYS[day.weekday()] not in step.until.weekdays:
            continue
        # A local time skipped by a DST change resolves to the same wall time after it.
        candidate = datetime.combine(day, time(hour, minute), tzinfo=zone)
        candidate = candidate.astimezone(UTC).astimezone(zone)
        if candidate > local:
            return candidate.astimezone(UTC)
    raise AssertionError("a week always holds each listed weekday")  # pragma: no cover


def _lookup(attributes: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    if name in attributes:
        return True, attributes[name]
    value: Any = attributes
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _same(a: Any, b: Any) -> bool:
    """Equality for attribute values: strings ignore case, "5" equals 5, True only True."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().casefold() == b.strip().casefold()
    if isinstance(a, int | float) or isinstance(b, int | float):
        left, right = _number(a), _number(b)
        return left is not None and left == right
    return bool(a == b)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def attribute_matches(condition: AttributeMatches, attributes: Mapping[str, Any]) -> bool:
    """Whether the lead's attributes satisfy the condition (strings compare ignoring case)."""
    present, value = _lookup(attributes, condition.name)
    op, expected = condition.op, condition.value
    if op == "exists":
        return present and value is not None
    if op == "not_exists":
        return not present or value is None
    if op == "eq":
        return present and _same(value, expected)
    if op == "ne":
        return not (present and _same(value, expected))
    if op == "in":
        return present and any(_same(value, e) for e in expected)
    if op == "contains":
        if isinstance(value, list):
            return any(_same(item, expected) for item in value)
        return isinstance(value, str) and str(expected).casefold() in value.casefold()
    left, right = _number(value), _number(expected)
    if not present or left is None or right is None:
        return False
    return {"gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[op]
