"""The policy engine's pure rules: quiet hours, the service window, overrides, templates."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from shvya_common.errors import PermanentError
from shvya_dispatch.policies import (
    ChannelPolicy,
    QuietHours,
    default_policies,
    fallback_template_setting,
    in_service_window,
    resolve_policy,
    suppression_channels,
    zone_named,
)
from shvya_dispatch.settings import DispatchSettings
from shvya_dispatch.templates import lead_fields, render_template

KOLKATA = ZoneInfo("Asia/Kolkata")


def test_quiet_hours_allow_only_inside_the_window():
    """08:00-22:00 allows 08:00 and 21:59 but not 22:00 or 07:59."""
    hours = QuietHours.parse("08:00-22:00")
    assert hours is not None
    assert hours.allows(time(8, 0)) and hours.allows(time(21, 59))
    assert not hours.allows(time(22, 0)) and not hours.allows(time(7, 59))


def test_quiet_hours_may_wrap_midnight():
    """A window like 20:00-02:00 allows late evening and early night only."""
    hours = QuietHours.parse("20:00-02:00")
    assert hours is not None
    assert hours.allows(time(23, 30)) and hours.allows(time(1, 0))
    assert not hours.allows(time(12, 0))


def test_next_start_is_tonight_or_tomorrow_morning_in_local_time():
    """At 23:30 local the next allowed moment is 08:00 tomorrow; at 05:00 it is 08:00 today."""
    hours = QuietHours.parse("08:00-22:00")
    assert hours is not None
    late = datetime(2025, 3, 10, 23, 30, tzinfo=KOLKATA)
    early = datetime(2025, 3, 10, 5, 0, tzinfo=KOLKATA)
    assert hours.next_start(late, KOLKATA) == datetime(2025, 3, 11, 8, 0, tzinfo=KOLKATA)
    assert hours.next_start(early.astimezone(UTC), KOLKATA) == datetime(
        2025, 3, 10, 8, 0, tzinfo=KOLKATA
    )


def test_next_start_across_a_daylight_saving_change():
    """The night clocks go forward, the next start is still 08:00 local (07:00 CET → CEST)."""
    berlin = ZoneInfo("Europe/Berlin")
    hours = QuietHours.parse("08:00-22:00")
    assert hours is not None
    start = hours.next_start(datetime(2025, 3, 29, 23, 0, tzinfo=berlin), berlin)
    assert start == datetime(2025, 3, 30, 8, 0, tzinfo=berlin)
    assert start.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("text", ["8-22", "08:00-08:00", "25:00-02:00"])
def test_bad_quiet_hours_are_refused(text):
    """Malformed or empty windows are refused rather than silently allowing everything."""
    with pytest.raises(ValueError):
        QuietHours.parse(text)


def test_service_window_is_open_for_24_hours_after_the_last_inbound():
    """Free text is allowed 23 h 59 min after the lead wrote, not 24 h after, nor if never."""
    now = datetime(2025, 1, 2, 12, 0, tzinfo=UTC)
    assert in_service_window(now - timedelta(hours=23, minutes=59), now, 24)
    assert not in_service_window(now - timedelta(hours=24), now, 24)
    assert not in_service_window(None, now, 24)


def test_defaults_follow_the_design():
    """Defaults: 15 s per WhatsApp recipient with a 24 h window, 60 s + jitter and a cap per
    WhatsApp Web account, email only 08:00-22:00."""
    defaults = default_policies(DispatchSettings())
    cloud, web, email = defaults["whatsapp_cloud"], defaults["whatsapp_web"], defaults["email"]
    assert (cloud.min_gap_seconds, cloud.window_hours, cloud.pace_by) == (15, 24, "recipient")
    assert (web.min_gap_seconds, web.pace_by) == (60, "account")
    assert web.jitter_seconds > 0 and web.daily_cap > 0
    assert email.quiet_hours == "08:00-22:00" and not email.paces


def test_company_overrides_replace_only_the_fields_they_name():
    """A company's policies.<channel> entry overrides those fields and keeps the rest."""
    defaults = default_policies(DispatchSettings())
    company = {"policies": {"whatsapp_web": {"daily_cap": 25}, "email": {"quiet_hours": None}}}
    web = resolve_policy(defaults, "whatsapp_web", company)
    assert web.daily_cap == 25 and web.min_gap_seconds == 60
    assert resolve_policy(defaults, "email", company).quiet_hours is None
    assert resolve_policy(defaults, "whatsapp_cloud", company) == defaults["whatsapp_cloud"]


@pytest.mark.parametrize(
    "override", [{"min_gap_seconds": -1}, {"quiet_hours": "late"}, {"quiet_hours": "09:00-09:00"}]
)
def test_invalid_company_overrides_fall_back_to_defaults(override):
    """A bad override is ignored (and logged), never loosening or stopping the channel."""
    defaults = default_policies(DispatchSettings())
    policy = resolve_policy(defaults, "email", {"policies": {"email": override}})
    assert policy == defaults["email"]


def test_unknown_channels_have_no_rules():
    """The log channel (and anything unnamed) has no pacing, window or quiet hours."""
    policy = resolve_policy(default_policies(DispatchSettings()), "log", {})
    assert policy == ChannelPolicy() and not policy.paces and policy.quiet is None


def test_time_zone_falls_back_from_lead_to_company_to_utc():
    """An unknown lead zone falls back to the company's, an unknown company zone to UTC."""
    assert zone_named("Asia/Kolkata", "UTC").key == "Asia/Kolkata"
    assert zone_named("Mars/Olympus", "Europe/Berlin").key == "Europe/Berlin"
    assert zone_named(None, "Nowhere/Else").key == "UTC"


def test_whatsapp_suppressions_cover_both_whatsapp_channels():
    """A WhatsApp opt-out binds Cloud and Web sends alike; email stays separate."""
    assert set(suppression_channels("whatsapp_web")) >= {"whatsapp_cloud", "whatsapp_web", "all"}
    assert suppression_channels("email") == ["email", "all"]


def test_fallback_template_setting_accepts_a_name_or_an_object():
    """whatsapp_fallback_template is a name, or {name, language}."""
    assert fallback_template_setting({"whatsapp_fallback_template": "reengage"}) == (
        "reengage",
        None,
    )
    assert fallback_template_setting(
        {"whatsapp_fallback_template": {"name": "reengage", "language": "hi"}}
    ) == ("reengage", "hi")
    assert fallback_template_setting({}) == ("", None)


def template_row(body: str, variables: list) -> dict:
    return {
        "id": uuid.uuid4(),
        "name": "follow_up",
        "language": "en_US",
        "body": body,
        "variables": variables,
        "status": "approved",
        "channel": "whatsapp_cloud",
    }


LEAD = {
    "contact_name": "Asha  Rao",
    "phone_e164": "+919867800451",
    "email": None,
    "attributes": {"city": "Pune", "vip": True},
    "company_name": "Acme",
}


def test_template_parameters_are_filled_from_lead_fields():
    """Variables name lead fields (first_name, phone, attributes) and fill {{1}}, {{2}}, ... ."""
    rendered = render_template(
        template_row(
            "Hi {{1}}, {{2}} from {{3}} here ({{4}}).",
            ["first_name", "company_name", "attributes.city", "phone"],
        ),
        LEAD,
    )
    assert rendered.parameters == ("Asha", "Acme", "Pune", "+919867800451")
    assert rendered.text == "Hi Asha, Acme from Pune here (+919867800451)."


def test_missing_field_uses_the_default_or_fails_before_sending():
    """A lead without the field gets the variable's default; with no default the send fails."""
    with_default = render_template(
        template_row("Hello {{1}}", [{"field": "email", "default": "there"}]), LEAD
    )
    assert with_default.text == "Hello there"
    with pytest.raises(PermanentError, match="email"):
        render_template(template_row("Hello {{1}}", ["email"]), LEAD)


def test_parameter_count_must_match_the_body():
    """Too few or too many parameters fail here instead of as Graph error 132000."""
    with pytest.raises(PermanentError, match="takes 2"):
        render_template(template_row("{{1}} and {{2}}", ["first_name"]), LEAD)


def test_explicit_parameters_win_and_are_cleaned():
    """template_params from the send replace the variables; newlines and tabs are flattened."""
    rendered = render_template(template_row("Order {{1}}", ["first_name"]), LEAD, ["A-1\n\t2"])
    assert rendered.parameters == ("A-1 2",)


def test_lead_fields_skip_empty_and_non_scalar_values():
    """Only present scalar values are offered: no empty email, no booleans."""
    fields = lead_fields(LEAD)
    assert "email" not in fields and "vip" not in fields
    assert fields["contact_name"] == "Asha Rao" and fields["last_name"] == "Rao"
