"""The rules behind campaigns and schedules, without a server: cron firings on a company's wall
clock across DST, send windows in a lead's zone, a run's allowance under the rates, the
authored HTML part's tracking, and rendering errors that name the part."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from shvya_common.campaigns import CampaignTemplate, SendWindow, plan_zones, render_campaign
from shvya_common.cron import CronError, check_expression, next_fire, upcoming
from shvya_common.render import RenderError
from shvya_dispatch.channels.email_html import prepare_html
from shvya_scheduler.campaigns import allowance

NY, BERLIN, KOLKATA = ZoneInfo("America/New_York"), ZoneInfo("Europe/Berlin"), "Asia/Kolkata"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_the_same_expression_fires_at_each_companys_own_nine_oclock() -> None:
    """'0 9 * * *' is 09:00 on the company's clock: 13:00/14:00 UTC in New York, 03:30 UTC in
    Kolkata, and New York's instant moves by an hour across its DST change, not its local time."""
    after = utc(2026, 3, 6, 15)
    assert upcoming("0 9 * * *", NY, after=after, count=3) == [
        utc(2026, 3, 7, 14),  # EST
        utc(2026, 3, 8, 13),  # EDT from 8 March
        utc(2026, 3, 9, 13),
    ]
    assert next_fire("0 9 * * *", KOLKATA, after=after) == utc(2026, 3, 7, 3, 30)
    assert all(
        m.astimezone(NY).time() == time(9, 0)
        for m in upcoming("0 9 * * 1-5", NY, after=utc(2026, 10, 28), count=6)
    )


def test_a_time_the_clock_skips_fires_once_shifted_by_the_gap() -> None:
    """02:30 does not exist in Berlin on 29 March 2026: that day's run is at 03:30 local."""
    runs = upcoming("30 2 * * *", BERLIN, after=utc(2026, 3, 28, 12), count=2)
    assert [r.astimezone(BERLIN).replace(tzinfo=None) for r in runs] == [
        datetime(2026, 3, 29, 3, 30),
        datetime(2026, 3, 30, 2, 30),
    ]


def test_a_repeated_time_fires_once_but_wildcard_hours_fire_in_both_passes() -> None:
    """01:30 happens twice in New York on 1 November 2026: a daily job runs once, at the first;
    an hourly job runs every real hour, with no hole and no double."""
    daily = upcoming("30 1 * * *", NY, after=utc(2026, 10, 31, 12), count=2)
    assert daily == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]
    hourly = upcoming("0 * * * *", NY, after=utc(2026, 11, 1, 3, 30), count=5)
    assert hourly == [utc(2026, 11, 1, h) for h in (4, 5, 6, 7, 8)]


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("every day", "5 fields"),
        ("0 9 * * * 30", "5 fields"),
        ("61 * * * *", "not a valid"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_bad_expressions_are_refused_with_the_reason(expression: str, reason: str) -> None:
    """An expression that does not parse, has a seconds field or never fires is refused."""
    with pytest.raises(CronError, match=reason):
        next_fire(expression, "UTC", after=utc(2026, 1, 1))


def test_macros_and_spacing_are_normalised() -> None:
    """'@DAILY' and '0  9 * *  1' are accepted as '@daily' and '0 9 * * 1'."""
    assert check_expression("@DAILY") == "@daily"
    assert check_expression(" 0  9 * *  1 ") == "0 9 * * 1"
    assert next_fire("@daily", "UTC", after=utc(2026, 1, 1, 5)) == utc(2026, 1, 2)


def test_a_window_is_read_on_each_leads_clock_and_may_run_past_midnight() -> None:
    """Weekdays 09:00–17:00 is open at 10:00 in New York and closed at the same instant in
    Berlin (16:00 → still open) … and a 22:00–02:00 window covers 01:00 of the next day."""
    window = SendWindow(days=["mon", "tue", "wed", "thu", "fri"], start=time(9), end=time(17))
    monday_10_ny = datetime(2026, 5, 4, 10, tzinfo=NY)
    assert window.is_open(NY, monday_10_ny)
    assert window.is_open(BERLIN, monday_10_ny)  # 16:00 there
    assert not window.is_open(BERLIN, datetime(2026, 5, 4, 12, tzinfo=NY))  # 18:00 there
    saturday = datetime(2026, 5, 9, 10, tzinfo=NY)
    assert not window.is_open(NY, saturday)
    assert window.next_open(NY, saturday) == datetime(2026, 5, 11, 9, tzinfo=NY)
    late = SendWindow(days=["fri"], start=time(22), end=time(2))
    assert late.is_open(NY, datetime(2026, 5, 9, 1, tzinfo=NY))  # Saturday 01:00, Friday's
    assert not late.is_open(NY, datetime(2026, 5, 10, 1, tzinfo=NY))


def test_the_next_opening_follows_dst() -> None:
    """A window opening at 09:00 opens at 09:00 local on both sides of a DST change."""
    window = SendWindow(start=time(9), end=time(10))
    opening = window.next_open(NY, utc(2026, 3, 7, 16))  # Saturday 11:00 EST
    assert opening == utc(2026, 3, 8, 13)  # Sunday 09:00 EDT


def test_zones_split_into_open_ones_and_the_next_opening() -> None:
    """Zones inside the window are open now; the run waits for the earliest other opening; an
    unknown zone name falls back to the company's."""
    window = SendWindow(start=time(9), end=time(17))
    now = utc(2026, 5, 4, 14)  # 10:00 New York, 16:00 Berlin, 19:30 Kolkata
    plan = plan_zones(
        window, ["America/New_York", "Asia/Kolkata", "Mars/Base"], now, "Europe/Berlin"
    )
    assert plan.open == ["America/New_York", "Mars/Base"]
    assert plan.next_open == utc(2026, 5, 5, 3, 30)  # 09:00 in Kolkata
    assert plan_zones(None, ["Asia/Kolkata"], now, "UTC").open == ["Asia/Kolkata"]


def test_a_runs_allowance_is_the_smallest_of_batch_tick_share_and_minute_left() -> None:
    """600/min over a 10 s tick is 100 per run; a nearly spent minute, or the batch cap, is
    less; a tiny rate still moves one per run."""
    assert allowance([600], [0], 10, 500) == (100, "rate")
    assert allowance([600], [580], 10, 500) == (20, "minute")
    assert allowance([600], [0], 10, 50) == (50, "batch")
    assert allowance([600, 4], [10, 4], 10, 500) == (0, "minute")
    assert allowance([3], [0], 1, 500) == (1, "rate")


def test_authored_html_gets_tracked_links_footer_and_pixel() -> None:
    """http(s) links go through the click redirect with their escaping undone; mailto and
    anchors stay; footer and pixel go before </body>; a fragment becomes a document."""
    seen: list[str] = []

    def track(url: str) -> str:
        seen.append(url)
        return f"https://t.example/c?u={len(seen)}&x=1"

    doc = (
        '<html><body><a class="btn" href="https://example.com/?a=1&amp;b=2">Go</a>'
        "<a href='mailto:s@example.com'>mail</a><a href=#top>top</a></body></html>"
    )
    out = prepare_html(
        doc, track=track, pixel_url="https://t.example/o.gif", unsubscribe_url="https://u.example/x"
    )
    assert seen == ["https://example.com/?a=1&b=2"]
    assert 'class="btn" href="https://t.example/c?u=1&amp;x=1"' in out
    assert "href='mailto:s@example.com'" in out and "href=#top" in out
    assert out.index("Unsubscribe") < out.index("o.gif") < out.index("</body>")
    fragment = prepare_html("<p>Hi</p>", unsubscribe_url=None)
    assert fragment.startswith("<!DOCTYPE html>") and "<p>Hi</p>" in fragment


def test_rendering_names_the_part_and_the_missing_field() -> None:
    """A field the lead lacks fails with the part it is in; HTML is escaped, text is not."""
    template = CampaignTemplate(
        subject="Hi {{ lead.first_name }}",
        text="{{ lead.name }} & co",
        html="<b>{{ lead.name }}</b>",
    )
    email = render_campaign(template, {"contact_name": "A <b> B"}, {"name": "Acme"})
    assert (email.subject, email.text) == ("Hi A", "A <b> B & co")
    assert email.html == "<b>A &lt;b&gt; B</b>"
    broken = CampaignTemplate(subject="Hi", text="Your {{ lead.plan }}")
    with pytest.raises(RenderError, match=r"^text: .*plan"):
        render_campaign(broken, {"contact_name": "A"}, {"name": "Acme"})
    with pytest.raises(RenderError, match="subject: renders empty"):
        render_campaign(
            CampaignTemplate(subject="{{ lead.name }}", text="x"), {"contact_name": ""}, {}
        )
