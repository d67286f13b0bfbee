"""Email campaigns end to end against real NATS, PostgreSQL and an aiosmtpd server: the API
defines and previews them, the scheduler's `email.sequence` runs send them in bounded batches
through dispatch's real email channel, and the counts come from one query."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller

from shvya_common.campaigns import SendWindow
from shvya_common.embedded import free_port
from shvya_dispatch.settings import DispatchSettings
from tests.integration.campaign_support import (
    as_company,
    cplat_fixture,  # noqa: F401 (the `cplat` fixture)
    dispatch_worker,
    ingest_client,
    make_company,
    make_leads,
    recipient_statuses,
    run_results,
    scheduler_settings,
    scheduler_worker,
)
from tests.support import eventually

pytestmark = pytest.mark.integration

TEMPLATE = {
    "subject": "{{ lead.first_name }}, your spring offer from {{ company.name }}",
    "text": "Hi {{ lead.first_name }},\n\nSee https://example.com/spring?who={{ lead.id }}",
    "html": "<html><body><p>Hi {{ lead.first_name }} &amp; co,</p>"
    '<p><a href="https://example.com/spring?a=1&amp;b=2">Our offer</a>'
    ' or <a href="mailto:sales@example.com">write</a></p></body></html>',
}


@dataclass
class Mailbox:
    """An aiosmtpd handler that refuses the addresses in `bounce` as unknown mailboxes."""

    bounce: set[str] = field(default_factory=set)
    received: list[dict[str, Any]] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.bounce:
            return f"550 5.1.1 <{address}>: user unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append(
            {
                "rcpt_tos": list(envelope.rcpt_tos),
                "message": message_from_bytes(envelope.original_content, policy=policy.default),
            }
        )
        return "250 2.0.0 queued"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


def campaigns_url(company_id: uuid.UUID, *rest: object) -> str:
    return as_company(company_id, "/".join(["/v1/campaigns", *map(str, rest)]))


async def create_campaign(client: Any, company_id: uuid.UUID, **body: Any) -> dict[str, Any]:
    payload = {"name": "Spring", "template": TEMPLATE, **body}
    response = await client.post(campaigns_url(company_id), json=payload)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def counts(client: Any, company_id: uuid.UUID, campaign_id: str) -> dict[str, int]:
    response = await client.get(campaigns_url(company_id, campaign_id, "counts"))
    assert response.status_code == 200, response.text
    found: dict[str, int] = response.json()
    return found


async def test_a_campaign_to_500_leads_respects_suppressions_and_bounces(
    cplat, base_env, db_url, mailbox
):
    """500 leads (20 suppressed, 15 that hard-bounce, two leads sharing an address, one with no
    email) get at most one email each, no suppressed address receives mail, bounces are
    suppressed, and the counts, opens, clicks and the one-click unsubscribe add up."""
    box, port = mailbox
    pool = cplat.pool
    company = await make_company(pool)
    emails: list[str | None] = [f"lead{i}@example.org" for i in range(498)]
    emails += ["Shared@Example.org", "shared@example.org", None]  # one address, two leads
    await make_leads(pool, company, emails)
    suppressed = [f"lead{i}@example.org" for i in range(0, 40, 2)]  # 20
    await pool.executemany(
        "INSERT INTO suppressions (company_id, channel, address, reason) VALUES ($1, $2, $3, $4)",
        [
            (company, "email" if n % 2 else "all", a.upper(), "manual")
            for n, a in enumerate(suppressed)
        ],
    )
    box.bounce = {f"lead{i}@example.org" for i in range(101, 131, 2)}  # 15
    dispatch = DispatchSettings(
        _env_file=None,  # type: ignore[call-arg]
        **{k.lower(): v for k, v in base_env.items() if k != "ADMIN_TOKEN"},
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        smtp_from="news@acme.example",
        public_base_url="https://shvya.example.com",
    )
    sched = scheduler_settings(
        base_env,
        campaign_tick_seconds=0.2,
        campaign_batch_max=100,
        campaign_rate_per_minute=100_000,
    )
    async with ingest_client(base_env) as client:
        campaign = await create_campaign(client, company)
        assert campaign["status"] == "draft" and campaign["audience_size"] == 500
        cid = campaign["id"]
        async with scheduler_worker(cplat, sched), dispatch_worker(cplat, dispatch):
            sent = await client.post(campaigns_url(company, cid, "send"))
            assert sent.status_code == 202, sent.text

            await eventually(
                lambda: client.get(campaigns_url(company, cid)),
                lambda r: r.json()["status"] == "completed",
                timeout=60,
            )

            async def settled() -> dict[str, int]:
                c = await counts(client, company, cid)
                return c if c["pending"] + c["queued"] + c["deferred"] == 0 else {}

            final = await eventually(settled, timeout=90)
        # Two leads share an address: one recipient. 500 recipients, each requested at most once.
        assert final["recipients"] == 499
        assert final["suppressed"] == 20 and final["bounced"] == 15
        assert final["sent"] == 499 - 20 - 15 == len(box.received)
        assert final["failed"] == final["unknown"] == 0
        delivered = [r for m in box.received for r in m["rcpt_tos"]]
        assert len(delivered) == len(set(a.lower() for a in delivered))
        assert not {a.lower() for a in delivered} & {a.lower() for a in suppressed}
        assert not {a.lower() for a in delivered} & box.bounce
        bounced = await pool.fetchval(
            "SELECT count(*) FROM suppressions"
            " WHERE company_id = $1 AND reason LIKE 'hard bounce%'",
            company,
        )
        assert bounced == 15
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM messages WHERE send_key LIKE $1", f"campaign:{cid}:%"
            )
            == 499 - 20
        )

        # The mail itself: personalised subject, both parts, tracked links, one-click unsubscribe.
        first = next(m for m in box.received if m["rcpt_tos"] == ["lead1@example.org"])["message"]
        assert first["Subject"] == "Lead, your spring offer from Acme Solar"
        assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        html = first.get_body(("html",)).get_content()
        text = first.get_body(("plain",)).get_content()
        assert "Hi Lead &amp; co" in html and 'href="mailto:sales@example.com"' in html
        assert "https://example.com/spring?a=1" not in html  # wrapped in the click redirect
        assert "https://example.com/spring?who=" in text
        click = next(u for u in _hrefs(html) if urlsplit(u).path.startswith("/t/c/"))
        pixel = next(u for u in _srcs(html) if "/t/o/" in u)
        unsubscribe = first["List-Unsubscribe"].split(",")[0].strip(" <>")

        # Engagement through ingest's own endpoints: a person, a mail proxy, a one-click POST.
        path = urlsplit(pixel).path
        await client.get(path, headers={"User-Agent": "Mozilla/5.0 (Macintosh) Thunderbird/128"})
        second = next(m for m in box.received if m["rcpt_tos"] == ["lead3@example.org"])
        proxy_pixel = next(
            u for u in _srcs(second["message"].get_body(("html",)).get_content()) if "/t/o/" in u
        )
        await client.get(
            urlsplit(proxy_pixel).path,
            headers={"User-Agent": "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"},
        )
        redirect = await client.get(
            urlsplit(click).path, headers={"User-Agent": "Mozilla/5.0 (X11; Linux) Firefox/130"}
        )
        assert redirect.status_code == 302
        assert redirect.headers["location"] == "https://example.com/spring?a=1&b=2"
        one_click = await client.post(
            urlsplit(unsubscribe).path, content=b"List-Unsubscribe=One-Click"
        )
        assert one_click.status_code == 200
        after = await counts(client, company, cid)
        assert (after["opened"], after["machine_opened"], after["clicked"]) == (1, 1, 1)
        assert after["unsubscribed"] == 1 and after["machine_clicked"] == 0


def _hrefs(html: str) -> list[str]:
    import re

    return [h.replace("&amp;", "&") for h in re.findall(r'href="([^"]+)"', html)]


def _srcs(html: str) -> list[str]:
    import re

    return [h.replace("&amp;", "&") for h in re.findall(r'src="([^"]+)"', html)]


async def test_pause_stops_new_batches_and_resume_finishes_once(cplat, base_env):
    """A paused campaign requests nothing more (its pending run stops), and a resumed one
    finishes with every lead requested exactly once, the replaced chain doing nothing."""
    pool = cplat.pool
    company = await make_company(pool)
    await make_leads(pool, company, [f"p{i}@example.org" for i in range(60)])
    sched = scheduler_settings(
        base_env, campaign_tick_seconds=0.3, campaign_batch_max=4, campaign_rate_per_minute=60_000
    )
    async with ingest_client(base_env) as client:
        cid = (await create_campaign(client, company))["id"]
        async with scheduler_worker(cplat, sched):
            assert (await client.post(campaigns_url(company, cid, "send"))).status_code == 202
            await eventually(
                lambda: recipient_statuses(pool, uuid.UUID(cid)),
                lambda s: s.get("requested", 0) >= 8,
            )
            paused = await client.post(campaigns_url(company, cid, "pause"))
            assert paused.status_code == 200 and paused.json()["status"] == "paused"
            at_pause = (await recipient_statuses(pool, uuid.UUID(cid)))["requested"]
            # The chain's next run comes back, sees the pause and stops.
            results = await eventually(
                lambda: run_results(pool, uuid.UUID(cid)),
                lambda rs: any(r.get("stopped") for r in rs),
            )
            assert (await recipient_statuses(pool, uuid.UUID(cid)))["requested"] == at_pause < 60
            assert sum(r.get("requested", 0) for r in results) == at_pause
            again = await client.post(campaigns_url(company, cid, "pause"))
            assert again.status_code == 409 and "paused" in again.json()["detail"]

            resumed = await client.post(campaigns_url(company, cid, "resume"))
            assert resumed.status_code == 200 and resumed.json()["status"] == "sending"
            await eventually(
                lambda: client.get(campaigns_url(company, cid)),
                lambda r: r.json()["status"] == "completed",
                timeout=60,
            )
    assert await recipient_statuses(pool, uuid.UUID(cid)) == {"requested": 60}
    rows = await pool.fetch(
        "SELECT lead_id, count(*) AS n FROM messages WHERE send_key LIKE $1 GROUP BY lead_id",
        f"campaign:{cid}:%",
    )
    assert len(rows) == 60 and {r["n"] for r in rows} == {1}
    results = await run_results(pool, uuid.UUID(cid))
    assert all(r.get("requested", 0) <= 4 for r in results)


async def test_each_run_takes_a_bounded_batch_within_the_rate(cplat, base_env):
    """With 1200 sends a minute and a 0.25 s tick, each run requests 5 (the rate's share of a
    tick) until fewer are left; a campaign capped at 4 a minute stops at 4 for the minute."""
    pool = cplat.pool
    company = await make_company(
        pool, settings={"campaigns": {"rate_per_minute": 1200}, **_quiet()}
    )
    await make_leads(pool, company, [f"r{i}@example.org" for i in range(23)])
    other = await make_company(pool, name="Capped")
    await make_leads(pool, other, [f"c{i}@example.org" for i in range(10)])
    sched = scheduler_settings(base_env, campaign_tick_seconds=0.25, campaign_batch_max=100)
    async with ingest_client(base_env) as client:
        fast = (await create_campaign(client, company))["id"]
        capped = (await create_campaign(client, other, rate_per_minute=4))["id"]
        async with scheduler_worker(cplat, sched):
            for company_id, cid in ((company, fast), (other, capped)):
                assert (
                    await client.post(campaigns_url(company_id, cid, "send"))
                ).status_code == 202
            fast_runs = await eventually(
                lambda: run_results(pool, uuid.UUID(fast)),
                lambda rs: bool(rs) and rs[-1].get("status") == "completed",
            )
            capped_runs = await eventually(
                lambda: run_results(pool, uuid.UUID(capped)),
                lambda rs: sum(1 for r in rs if r.get("limited_by") == "minute") >= 3,
            )
    assert [r["requested"] for r in fast_runs] == [5, 5, 5, 5, 3]
    assert [r["limited_by"] for r in fast_runs] == ["rate"] * 4 + ["pending"]
    assert sum(r["requested"] for r in capped_runs) == 4
    assert [r["requested"] for r in capped_runs[:4]] == [1, 1, 1, 1]
    assert all(r["requested"] == 0 for r in capped_runs[4:])
    assert (await recipient_statuses(pool, uuid.UUID(capped))) == {"requested": 4, "pending": 6}


def _quiet() -> dict[str, Any]:
    return {"policies": {"email": {"quiet_hours": None}}}


async def test_the_send_window_holds_leads_whose_local_time_is_outside_it(cplat, base_env):
    """Leads 12 hours apart: only those whose own clock is inside the window are requested, and
    the next run waits, in a timer, for the window to open in the other zone."""
    pool = cplat.pool
    company = await make_company(pool)
    east, west = ZoneInfo("Etc/GMT-6"), ZoneInfo("Etc/GMT+6")  # UTC+6 and UTC-6
    east_now = datetime.now(UTC).astimezone(east)
    start = (east_now - timedelta(hours=5)).time().replace(second=0, microsecond=0)
    end = (east_now + timedelta(hours=5)).time().replace(second=0, microsecond=0)
    window = SendWindow(start=start, end=end)
    zones = ["Etc/GMT-6"] * 6 + ["Etc/GMT+6"] * 4
    await make_leads(pool, company, [f"w{i}@example.org" for i in range(10)], timezones=zones)
    sched = scheduler_settings(
        base_env, campaign_tick_seconds=0.2, campaign_batch_max=4, campaign_rate_per_minute=60_000
    )
    async with ingest_client(base_env) as client:
        body = {"window": {"start": start.isoformat("minutes"), "end": end.isoformat("minutes")}}
        cid = (await create_campaign(client, company, **body))["id"]
        async with scheduler_worker(cplat, sched):
            assert (await client.post(campaigns_url(company, cid, "send"))).status_code == 202
            runs = await eventually(
                lambda: run_results(pool, uuid.UUID(cid)),
                lambda rs: bool(rs) and rs[-1].get("limited_by") == "window",
            )
    assert [r["requested"] for r in runs] == [4, 2, 0]
    assert runs[0]["open_zones"] == ["Etc/GMT-6"] and runs[-1]["open_zones"] == []
    statuses = await pool.fetch(
        "SELECT timezone, status, count(*) AS n FROM campaign_recipients WHERE campaign_id = $1"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        uuid.UUID(cid),
    )
    assert [tuple(r) for r in statuses] == [
        ("Etc/GMT+6", "pending", 4),
        ("Etc/GMT-6", "requested", 6),
    ]
    waiting = datetime.fromisoformat(runs[-1]["next_run_at"])
    assert waiting == window.next_open(west, waiting - timedelta(seconds=1))
    assert waiting.astimezone(west).time() == start
    timer = await pool.fetchval(
        "SELECT due_at FROM timers WHERE status = 'pending' AND task_name = 'email.sequence'"
        " AND task_params->>'campaign_id' = $1",
        cid,
    )
    assert timer == waiting


async def test_preview_renders_for_a_lead_and_refuses_a_missing_field(cplat, base_env):
    """The preview renders the template for a given lead; a field that lead lacks is refused
    with 422 naming it, a template that does not parse is refused at create, and another
    company's campaign or lead is a 404."""
    pool = cplat.pool
    company = await make_company(pool)
    other = await make_company(pool, name="Other")
    with_plan, without = await make_leads(
        pool,
        company,
        ["asha@example.org", "ravi@example.org"],
        names=["Asha Rao", "Ravi"],
        attributes=[{"plan": "Cargo"}, {}],
    )
    (stranger,) = await make_leads(pool, other, ["x@example.org"])
    template = {
        "subject": "{{ lead.first_name }}: about {{ lead.plan }}",
        "text": "Your {{ lead.attributes.plan }} plan",
        "html": "<p>{{ lead.name }} &lt;3 {{ lead.plan }}</p>",
    }
    async with ingest_client(base_env) as client:
        cid = (await create_campaign(client, company, template=template))["id"]
        ok = await client.post(
            campaigns_url(company, cid, "preview"), json={"lead_id": str(with_plan)}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json() == {
            "lead_id": str(with_plan),
            "to": "asha@example.org",
            "subject": "Asha: about Cargo",
            "text": "Your Cargo plan",
            "html": "<p>Asha Rao &lt;3 Cargo</p>",
        }
        missing = await client.post(
            campaigns_url(company, cid, "preview"), json={"lead_id": str(without)}
        )
        assert missing.status_code == 422
        assert "subject" in missing.json()["detail"] and "plan" in missing.json()["detail"]
        edited = await client.post(
            campaigns_url(company, cid, "preview"),
            json={
                "email": "RAVI@example.org",
                "template": {"subject": "Hi {{ lead.first_name }}", "text": "x"},
            },
        )
        assert edited.status_code == 200 and edited.json()["subject"] == "Hi Ravi"
        broken = await client.post(
            campaigns_url(company),
            json={"name": "Broken", "template": {"subject": "Hi {{ lead.", "text": "x"}},
        )
        assert broken.status_code == 422 and "subject" in broken.json()["detail"]
        foreign = await client.post(
            campaigns_url(company, cid, "preview"), json={"lead_id": str(stranger)}
        )
        assert foreign.status_code == 404
        assert (await client.get(campaigns_url(other, cid))).status_code == 404
        assert (await client.post(campaigns_url(other, cid, "send"))).status_code == 404
        listed = (await client.get(campaigns_url(company))).json()
        assert listed["total"] == 1 and listed["campaigns"][0]["id"] == cid
        assert (await client.get(campaigns_url(other))).json()["total"] == 0


async def test_the_audience_filters_leads_with_an_address(cplat, base_env):
    """Stages, attributes, explicit ids, creation dates and recent activity each narrow the
    audience, combined with AND; leads without an email address are never in it."""
    pool = cplat.pool
    company = await make_company(pool)
    pipe = await pool.fetchval(
        "INSERT INTO pipelines (company_id, name, is_default) VALUES ($1, 'Sales', true)"
        " RETURNING id",
        company,
    )
    new, won = [
        await pool.fetchval(
            "INSERT INTO stages (pipeline_id, name, position) VALUES ($1, $2, $3) RETURNING id",
            pipe,
            name,
            n,
        )
        for n, name in ((1, "New"), (2, "Won"))
    ]
    leads = await make_leads(
        pool,
        company,
        ["a@example.org", "b@example.org", "c@example.org", "d@example.org", None],
        attributes=[{"plan": "trial", "n": 1}, {"plan": "trial"}, {"plan": "paid"}, {}, {}],
    )
    a, b, c, d, phone_only = leads
    await pool.execute("UPDATE leads SET stage_id = $2 WHERE id = ANY($1)", [a, c, phone_only], new)
    await pool.execute("UPDATE leads SET stage_id = $2 WHERE id = $1", b, won)
    await pool.execute(
        "UPDATE leads SET last_inbound_at = now() - interval '2 days' WHERE id = ANY($1)", [a, d]
    )
    await pool.execute("UPDATE leads SET created_at = now() - interval '30 days' WHERE id = $1", c)
    cases = [
        ({}, 4),
        ({"stages": ["New"]}, 2),
        ({"attributes": {"plan": "trial"}}, 2),
        ({"stages": ["New"], "attributes": {"plan": "trial"}}, 1),
        ({"lead_ids": [str(b), str(d), str(phone_only)]}, 2),
        ({"active_within_days": 7}, 2),
        ({"created_before": (datetime.now(UTC) - timedelta(days=7)).isoformat()}, 1),
        ({"created_after": (datetime.now(UTC) - timedelta(days=7)).isoformat()}, 3),
    ]
    async with ingest_client(base_env) as client:
        for audience, size in cases:
            made = await create_campaign(client, company, audience=audience)
            assert made["audience_size"] == size, audience
        wrong = await client.post(
            campaigns_url(company),
            json={"name": "x", "template": TEMPLATE, "audience": {"stage": "New"}},
        )
        assert wrong.status_code == 422
