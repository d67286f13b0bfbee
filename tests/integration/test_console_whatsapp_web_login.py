"""The WhatsApp Web login command keeps its QR codes and outcome in the database, where the
console shows them (against the fake WhatsApp Web app in Debian's Chromium)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from shvya_common.whatsapp.web_logins import read_login
from tests.integration.fake_whatsapp_web import FakeWhatsAppWeb
from tests.integration.test_whatsapp_web_channel import CHROMIUM, fake  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


async def _login_row(db_url: str, account: str, status: str, timeout: float = 60) -> bytes | None:
    conn = await asyncpg.connect(db_url)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            login = await read_login(conn, account)
            if login is not None and login.status == status:
                return login.qr_png
            assert asyncio.get_running_loop().time() < deadline, f"no {status} login for {account}"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def test_the_login_command_stores_each_qr_and_the_outcome_for_the_console(
    fake: FakeWhatsAppWeb,  # noqa: F811
    tmp_path: Path,
    db_url: str,
) -> None:
    """While the QR waits to be scanned its PNG is in `whatsapp_web_logins` (status waiting);
    once linked the row says so and holds no QR."""
    fake.logged_in = False
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "WHATSAPP_WEB_URL": fake.url,
        "WHATSAPP_WEB_CHROMIUM_PATH": str(CHROMIUM),
        "WHATSAPP_WEB_PROFILE_DIR": str(tmp_path / "profiles"),
        "WHATSAPP_WEB_LOGIN_TIMEOUT_SECONDS": "60",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shvya_dispatch",
        "whatsapp-web-login",
        "--account",
        "shop",
        "--settle-seconds",
        "0",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        png = await _login_row(db_url, "shop", "waiting")
        assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
        assert png == (tmp_path / "profiles" / "shop-qr.png").read_bytes()
        fake.logged_in = True
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert await _login_row(db_url, "shop", "linked", timeout=5) is None
