"""Linking a WhatsApp Web account against the fake: the `whatsapp-web-login` command as a
process (QR codes drawn from wa-js's auth code, saved as PNG and stored for the console,
refreshed when WhatsApp lets one go idle, exit 0 once linked), and a pairing-code login served
by the dispatch replica that holds the account, without stopping it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from shvya_common.whatsapp import web_accounts as db
from shvya_dispatch.channels.whatsapp_web import WhatsAppWebChannel, qr_png
from shvya_dispatch.web_accounts import WebAccounts
from shvya_dispatch.web_cli import run_login
from tests.integration.fake_whatsapp_web import FakeWhatsAppWeb, serve
from tests.integration.test_whatsapp_web_channel import make_settings
from tests.integration.test_whatsapp_web_login_codes import login
from tests.support import eventually

pytestmark = pytest.mark.integration


async def start_linking(
    db_url: str, tmp_path: Path, account: str, *flags: str
) -> tuple[FakeWhatsAppWeb, web.AppRunner, Path, asyncio.subprocess.Process]:
    """An unlinked fake WhatsApp Web, and the login command for `account` waiting on it (its
    QR codes saved to the returned path)."""
    fake = FakeWhatsAppWeb(linked=False)
    runner = await serve(fake)
    qr_file = tmp_path / f"{account}-qr.png"
    proc = await login(
        fake.url,
        tmp_path,
        account,
        *flags,
        "--qr-path",
        str(qr_file),
        "--timeout",
        "60",
        "--settle-seconds",
        "0",
        DATABASE_URL=db_url,
    )
    return fake, runner, qr_file, proc


async def test_login_command_shows_refreshed_qr_codes_and_exits_once_linked(db_url, tmp_path):
    """The command saves and stores each QR code, asks for a new one when WhatsApp lets it go
    idle, and exits 0 once the phone links the account, which starts its warm-up."""
    fake, runner, qr_file, proc = await start_linking(db_url, tmp_path, "fresh")
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        device = await fake.wait_device()
        first = await eventually(
            lambda: db.read_login(pool, "fresh"), lambda r: r and r["qr_text"], timeout=60
        )
        assert first["qr_text"] == device.qr and first["qr_png"] == qr_png(device.qr)
        assert qr_file.read_bytes() == qr_png(device.qr)
        await fake.idle_qr(device)
        second = await eventually(
            lambda: db.read_login(pool, "fresh"),
            lambda r: r["qr_text"] != first["qr_text"],
            timeout=30,
        )
        assert device.qr_refreshes == 1 and second["qr_text"] == device.qr
        await fake.link(device)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert "is linked as 15550001111@c.us" in out.decode()
        assert (await db.read_login(pool, "fresh"))["status"] == "linked"
        account = await db.read_account(pool, "fresh")
        assert account is not None and account.linked_at is not None and not account.lease_live
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await pool.close()
        await runner.cleanup()


async def test_a_pairing_code_login_is_served_by_the_replica_that_holds_the_account(
    plat, db_url, tmp_path
):
    """While a dispatch replica drives the account, the login command asks it (through the
    database) for a pairing code, prints it, and finishes when the phone enters it; the
    replica's probe then sees the account connected and lifts its logout pause."""
    fake = FakeWhatsAppWeb(linked=False)
    runner = await serve(fake)
    settings = make_settings(
        fake.url,
        tmp_path / "profiles",
        database_url=db_url,
        whatsapp_web_supervise_seconds=0.2,
        whatsapp_web_probe_seconds=0.5,
    )
    channel = WhatsAppWebChannel(settings)
    supervisor = WebAccounts(settings, plat.pool, plat.bus, channel)
    stopping = asyncio.Event()
    lines: list[str] = []
    async with channel:
        task = asyncio.create_task(supervisor.run(stopping))
        try:
            device = await fake.wait_device()
            await eventually(
                lambda: db.read_account(plat.pool, "default"),
                lambda r: r and r.state == "logged_out" and r.pause_in_force,
                timeout=30,
            )
            login = asyncio.create_task(
                run_login(
                    settings,
                    "default",
                    phone="+1 555 000 1111",
                    qr_path=None,
                    timeout=30,
                    settle_seconds=0,
                    say=lines.append,
                )
            )

            async def pairing() -> str | None:
                return device.pairing_phone

            async def printed() -> bool:
                return any("Pairing code" in line and "ABCD-" in line for line in lines)

            assert await eventually(pairing, timeout=30) == "15550001111"
            await eventually(printed, timeout=30)
            await fake.link(device)
            assert await asyncio.wait_for(login, 30) == 0
            assert any("driven by" in line for line in lines)
            await eventually(
                lambda: db.read_account(plat.pool, "default"),
                lambda r: r.state == "connected" and not r.pause_in_force,
                timeout=30,
            )
        finally:
            stopping.set()
            await task
    await runner.cleanup()
