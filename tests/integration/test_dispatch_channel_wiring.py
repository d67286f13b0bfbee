"""Dispatch registers the email and WhatsApp Web channels only when configured, and closes the
WhatsApp Web browser machinery with the service's exit stack."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest

from shvya_dispatch.app import build_deps
from shvya_dispatch.channels.email import EmailChannel
from shvya_dispatch.channels.whatsapp_web import WhatsAppWebChannel
from shvya_dispatch.settings import DispatchSettings

pytestmark = pytest.mark.integration


async def test_channels_are_registered_only_when_configured(db_url: str, tmp_path: Path) -> None:
    """Without SMTP_HOST or WHATSAPP_WEB_ENABLED neither channel exists; with them both are
    routed to, and leaving the stack stops WhatsApp Web's Playwright."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        async with AsyncExitStack() as stack:
            bare = await build_deps(DispatchSettings(_env_file=None), pool, stack)
        assert "email" not in bare.router.channels
        assert "whatsapp_web" not in bare.router.channels

        settings = DispatchSettings(
            _env_file=None,
            smtp_host="127.0.0.1",
            smtp_from="sales@acme.example",
            whatsapp_web_enabled=True,
            whatsapp_web_profile_dir=tmp_path / "profiles",
        )
        async with AsyncExitStack() as stack:
            deps = await build_deps(settings, pool, stack)
            assert isinstance(deps.router.channels["email"], EmailChannel)
            web = deps.router.channels["whatsapp_web"]
            assert isinstance(web, WhatsAppWebChannel)
            assert web.account_for(uuid.uuid4()) == "default"
            assert web.browser.running
        assert not web.browser.running
    finally:
        await pool.close()
