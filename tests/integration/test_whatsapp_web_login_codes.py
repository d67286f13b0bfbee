"""The WhatsApp Web login's exit codes, one meaning each: 3 when WhatsApp Web cannot be reached,
5 when another process holds the account's browser profile (0 and 1 are pinned in
test_whatsapp_web_channel.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from shvya_common.embedded import free_port
from tests.integration.fake_whatsapp_web import FAKE_WPP, FakeWhatsAppWeb

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("WHATSAPP_WEB_CHROMIUM_PATH", "/usr/bin/chromium"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeWhatsAppWeb]:
    state = FakeWhatsAppWeb()
    runner = web.AppRunner(state.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


async def _login(url: str, tmp_path: Path, *extra: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "WHATSAPP_WEB_URL": url,
        "WHATSAPP_WEB_WA_JS_PATH": str(FAKE_WPP),
        "WHATSAPP_WEB_CHROMIUM_PATH": str(CHROMIUM),
        "WHATSAPP_WEB_PROFILE_DIR": str(tmp_path / "profiles"),
        "WHATSAPP_WEB_LOAD_TIMEOUT_SECONDS": "10",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shvya_dispatch",
        "whatsapp-web-login",
        "--account",
        "sales",
        *extra,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_login_exits_3_when_whatsapp_web_cannot_be_reached(tmp_path: Path) -> None:
    """A refused connection is a network failure (exit 3), not a busy profile."""
    proc = await _login(f"http://127.0.0.1:{free_port()}", tmp_path, "--timeout", "30")
    _, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 3, err.decode()
    assert "could not load WhatsApp Web" in err.decode()


async def test_login_exits_5_when_the_profile_is_in_use(
    fake: FakeWhatsAppWeb, tmp_path: Path
) -> None:
    """A second login on a profile that a running one holds says so and exits 5."""
    fake.new_devices_linked = False
    first = await _login(fake.url, tmp_path, "--timeout", "60")
    assert first.stdout is not None
    try:

        async def qr_saved() -> None:
            assert first.stdout is not None
            while line := (await first.stdout.readline()).decode():
                if "QR code saved to" in line:
                    return
            raise AssertionError("the first login ended without saving a QR code")

        await asyncio.wait_for(qr_saved(), 60)
        second = await _login(fake.url, tmp_path, "--timeout", "5")
        _, err = await asyncio.wait_for(second.communicate(), 90)
        assert second.returncode == 5, err.decode()
        assert "is the dispatch service using this profile" in err.decode()
    finally:
        first.kill()
        await first.wait()
