"""`shvya_channel_paused{channel}`, as the scheduler computes it, for both WhatsApp channels.

WhatsApp Cloud records a pause per company in `channel_pauses`; WhatsApp Web records one per
account in `whatsapp_web_accounts` (restriction, timelock, ban, logout: the writes dispatch's
account supervisor makes). The scheduler's gauge loop runs here against a real database, and
the gauge is read from prometheus_client's registry, as Prometheus scrapes it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

import shvya_scheduler.app as scheduler_app
from shvya_common.channel_accounts import web_profile
from shvya_common.metrics import CHANNEL_PAUSED
from shvya_common.whatsapp import web_accounts as db
from tests.integration.dispatch_support import make_company
from tests.support import eventually

pytestmark = pytest.mark.integration


def paused(channel: str) -> float | None:
    return REGISTRY.get_sample_value("shvya_channel_paused", {"channel": channel})


@pytest.fixture
async def gauge_loop(plat, monkeypatch) -> AsyncIterator[None]:
    """The scheduler's gauge loop, re-reading the database every 50 ms, from no value at all
    (as a fresh scheduler starts: the registry is the process's, shared by the tests)."""
    monkeypatch.setattr(scheduler_app, "GAUGE_SECONDS", 0.05)
    CHANNEL_PAUSED.clear()
    stopping = asyncio.Event()
    task = asyncio.create_task(scheduler_app.gauges(plat, stopping))
    yield
    stopping.set()
    await asyncio.wait_for(task, 5)


async def reads(channel: str, value: float) -> None:
    await eventually(lambda: asyncio.sleep(0, paused(channel)), lambda v: v == value, timeout=5)


async def test_a_paused_whatsapp_web_account_sets_the_gauge_until_lifted(plat, gauge_loop):
    """A logged-out account (paused until linked again) reads 1 for whatsapp_web; lifting it
    reads 0 again. A timelock (new contacts only, for a while) is a pause too."""
    await db.start_pause(plat.pool, "sales", "logged_out", "logged out (phone)", None, "all")
    await reads("whatsapp_web", 1)
    assert await db.lift_pause(plat.pool, "sales")
    await reads("whatsapp_web", 0)

    until = datetime.now(UTC) + timedelta(hours=24)
    await db.start_pause(
        plat.pool, "sales", "timelock", "reach-out timelock", until, "new_contacts"
    )
    await reads("whatsapp_web", 1)


async def test_an_expired_web_pause_and_a_deleted_account_do_not_count(plat, gauge_loop):
    """A pause whose `paused_until` has passed is over; a company's channel account's profile
    counts only while the channel account exists."""
    past = datetime.now(UTC) - timedelta(minutes=1)
    await db.start_pause(plat.pool, "old", "timelock", "reach-out timelock", past, "new_contacts")
    company = await make_company(plat.pool)
    account_id = uuid.uuid4()
    await plat.pool.execute(
        "INSERT INTO channel_accounts (id, company_id, channel, name) VALUES ($1, $2,"
        " 'whatsapp_web', 'main')",
        account_id,
        company,
    )
    await db.start_pause(plat.pool, web_profile(account_id), "banned", "TOS_BLOCK", None, "all")
    await reads("whatsapp_web", 1)
    await plat.pool.execute("DELETE FROM channel_accounts WHERE id = $1", account_id)
    await reads("whatsapp_web", 0)


async def test_whatsapp_cloud_pauses_still_count_beside_web_ones(plat, gauge_loop):
    """The `channel_pauses` side is unchanged: a company's Cloud pause reads 1 for
    whatsapp_cloud, and a Web account paused as well leaves both at 1."""
    company = await make_company(plat.pool)
    await plat.pool.execute(
        "INSERT INTO channel_pauses (company_id, channel, error_code, reason)"
        " VALUES ($1, 'whatsapp_cloud', 368, 'temporarily blocked')",
        company,
    )
    await db.start_pause(plat.pool, "sales", "restricted", "3 refusals", None, "all")
    await reads("whatsapp_cloud", 1)
    await reads("whatsapp_web", 1)
