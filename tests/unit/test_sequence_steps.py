"""Sequence steps without a server: how a list of steps is checked and keyed, how a step is
stored and read back, when a wait ends in the lead's zone, and how attribute conditions match."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from shvya_common.sequences.steps import (
    STEP,
    AttributeMatches,
    StepsError,
    WaitStep,
    attribute_matches,
    check_steps,
    step_columns,
    step_from_row,
    wait_until,
    zone_named,
)


def steps(*raw: dict) -> list:
    return [STEP.validate_python(r) for r in raw]


def test_keys_default_to_the_position_and_never_collide() -> None:
    """Steps without a key get step-<n>, stepping around keys given to other steps."""
    keyed = check_steps(
        steps({"kind": "send", "text": "a"}, {"key": "step-1", "kind": "end"}, {"kind": "end"})
    )
    assert [s.key for s in keyed] == ["step-1-2", "step-1", "step-3"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([{"key": "a", "kind": "end"}, {"key": "a", "kind": "end"}], "repeated: a"),
        ([{"key": "end", "kind": "end"}], "branch targets, not step keys"),
        (
            [{"kind": "condition", "condition": {"type": "replied"}, "then": "ghost"}],
            "'ghost', which is no step key",
        ),
        (
            [
                {"key": "a", "kind": "send", "text": "buy"},
                {"key": "b", "kind": "move_stage", "stage": "New"},
                {"key": "c", "kind": "condition", "condition": {"type": "replied"}, "else": "a"},
            ],
            "a → b → c → a loop without a wait step",
        ),
        (
            [
                {
                    "key": "self",
                    "kind": "condition",
                    "condition": {"type": "replied"},
                    "then": "self",
                }
            ],
            "self → self loop",
        ),
    ],
)
def test_lists_that_cannot_run_are_refused_with_the_reason(raw: list, reason: str) -> None:
    """Duplicate keys, reserved keys, unknown branch targets and wait-free loops are refused."""
    with pytest.raises(StepsError, match=reason):
        check_steps(steps(*raw))


def test_a_loop_through_a_wait_is_allowed() -> None:
    """Going back to an earlier step is fine when the way back passes a wait step."""
    check_steps(
        steps(
            {"key": "a", "kind": "send", "text": "ping"},
            {"key": "w", "kind": "wait", "seconds": 86400},
            {"kind": "condition", "condition": {"type": "replied"}, "then": "end", "else": "a"},
        )
    )


@pytest.mark.parametrize(
    "raw",
    [
        {"kind": "send"},
        {"kind": "send", "text": "Hi {{ lead.first_name"},
        {"kind": "wait"},
        {"kind": "wait", "until": {"time": "25:00"}},
        {"kind": "condition", "condition": {"type": "attribute", "name": "x", "op": "in"}},
        {"kind": "condition", "condition": {"type": "bogus"}},
        {"kind": "send", "text": "x", "surprise": 1},
    ],
)
def test_malformed_steps_are_refused_by_their_model(raw: dict) -> None:
    """A send needs text or a template that parses, a wait something to wait for, a condition
    a known type with the values its operator needs; unknown fields are refused."""
    with pytest.raises(ValidationError):
        STEP.validate_python(raw)


def test_a_step_reads_back_as_it_was_stored() -> None:
    """The original's columns hold what fits them and `config` the rest, losslessly."""
    template = uuid.uuid4()
    originals = steps(
        {
            "key": "s",
            "kind": "send",
            "channel": "email",
            "text": "Hi",
            "template_id": str(template),
        },
        {"key": "t", "kind": "send", "template_id": str(template), "template_params": ["{{ x }}"]},
        {
            "key": "w",
            "kind": "wait",
            "seconds": 90,
            "until": {"weekdays": ["mon"], "time": "09:30"},
        },
        {"key": "u", "kind": "wait", "until": {"time": "08:00"}},
        {"key": "c", "kind": "condition", "condition": {"type": "email_clicked"}, "else": "end"},
        {"key": "m", "kind": "move_stage", "stage": "Qualified"},
        {"key": "e", "kind": "end"},
    )
    for step in originals:
        row = {**step_columns(step), "id": None}
        assert step_from_row(row) == step
    assert step_columns(originals[2])["delay_seconds"] == 90
    assert step_columns(originals[0])["body"] == "Hi"


def test_a_wait_for_a_weekday_and_time_ends_in_the_leads_zone() -> None:
    """'Until Monday 09:00' is the next Monday 09:00 local time strictly after the duration."""
    step = WaitStep.model_validate({"until": {"weekdays": ["mon"], "time": "09:00"}})
    kolkata = ZoneInfo("Asia/Kolkata")
    # Saturday 2025-03-01 12:00 UTC is 17:30 in Kolkata.
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert wait_until(step, now, kolkata) == datetime(2025, 3, 3, 3, 30, tzinfo=UTC)
    later = WaitStep.model_validate({"seconds": 3 * 86400, "until": step.until.model_dump()})
    assert wait_until(later, now, kolkata) == datetime(2025, 3, 10, 3, 30, tzinfo=UTC)
    plain = WaitStep(seconds=60)
    assert (wait_until(plain, now, kolkata) - now).total_seconds() == 60


def test_a_wait_across_a_dst_change_keeps_the_local_time() -> None:
    """Over the spring-forward weekend, 09:00 in New York is still 09:00 local (13:00 UTC)."""
    step = WaitStep.model_validate({"until": {"weekdays": ["mon"], "time": "09:00"}})
    new_york = ZoneInfo("America/New_York")
    # Friday 2025-03-07 (EST, UTC-5); DST starts Sunday 2025-03-09.
    now = datetime(2025, 3, 7, 18, 0, tzinfo=UTC)
    assert wait_until(step, now, new_york) == datetime(2025, 3, 10, 13, 0, tzinfo=UTC)
    skipped = WaitStep.model_validate({"until": {"weekdays": ["sun"], "time": "02:30"}})
    # 02:30 does not exist that Sunday; it resolves to the same wall time after the jump.
    assert wait_until(skipped, now, new_york).astimezone(new_york).hour == 3


def test_an_unknown_zone_falls_back_to_the_next_then_utc() -> None:
    """A lead's zone that is not an IANA name gives way to the company's, then UTC."""
    assert zone_named("Mars/Olympus", "Europe/Berlin") == ZoneInfo("Europe/Berlin")
    assert zone_named(None, "nonsense") == ZoneInfo("UTC")


@pytest.mark.parametrize(
    ("condition", "attributes", "expected"),
    [
        ({"op": "eq", "value": "Pro"}, {"plan": "pro"}, True),
        ({"op": "eq", "value": 5}, {"plan": "5"}, True),
        ({"op": "eq", "value": True}, {"plan": 1}, False),
        ({"op": "ne", "value": "pro"}, {}, True),
        ({"op": "exists"}, {"plan": None}, False),
        ({"op": "not_exists"}, {}, True),
        ({"op": "in", "value": ["basic", "pro"]}, {"plan": "PRO"}, True),
        ({"op": "contains", "value": "sol"}, {"plan": "Rooftop Solar"}, True),
        ({"op": "contains", "value": "pro"}, {"plan": ["basic", "pro"]}, True),
        ({"op": "gt", "value": 3}, {"plan": "4.5"}, True),
        ({"op": "lte", "value": 3}, {"plan": "many"}, False),
    ],
)
def test_attribute_conditions(condition: dict, attributes: dict, expected: bool) -> None:
    """Strings compare ignoring case, numbers across string and number, missing is not equal."""
    model = AttributeMatches.model_validate({"type": "attribute", "name": "plan", **condition})
    assert attribute_matches(model, attributes) is expected


def test_nested_attributes_are_reached_with_dots() -> None:
    """'address.city' looks inside the lead's nested attributes."""
    model = AttributeMatches(type="attribute", name="address.city", op="eq", value="pune")
    assert attribute_matches(model, {"address": {"city": "Pune"}})
    assert not attribute_matches(model, {"address": "Pune"})
