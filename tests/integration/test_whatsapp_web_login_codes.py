"""The WhatsApp Web commands' exit codes, one meaning each and the same as the other `shvya`
commands': 3 when a server cannot be reached (WhatsApp Web; PostgreSQL for the commands that
need it), 5 when another process holds the account (its browser profile, or its lease); 0 and 1
are pinned in test_whatsapp_web_login.py."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from shvya_common.embedded import free_port
from shvya_common.whatsapp import web_accounts as db
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


async def web_command(
    command: str,
    url: str,
    tmp_path: Path,
    *extra: str,
    module: str = "shvya_dispatch",
    **env: str,
) -> asyncio.subprocess.Process:
    """A WhatsApp Web command run as the operator runs it, against the page at `url`, with
    stdout and stderr piped (`module` shvya_common.cli for the `shvya` form)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        command,
        *extra,
        cwd=tmp_path,
        env={
            **os.environ,
            "SHVYA_IGNORE_DOTENV": "1",
            "WHATSAPP_WEB_URL": url,
            "WHATSAPP_WEB_WA_JS_PATH": str(FAKE_WPP),
            "WHATSAPP_WEB_CHROMIUM_PATH": str(CHROMIUM),
            "WHATSAPP_WEB_PROFILE_DIR": str(tmp_path / "profiles"),
            "WHATSAPP_WEB_LOAD_TIMEOUT_SECONDS": "10",
            **env,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def login(
    url: str, tmp_path: Path, account: str, *extra: str, **env: str
) -> asyncio.subprocess.Process:
    """`whatsapp-web-login --account <account>` against the page at `url`."""
    return await web_command(
        "whatsapp-web-login", url, tmp_path, "--account", account, *extra, **env
    )


async def _login(url: str, tmp_path: Path, *extra: str) -> asyncio.subprocess.Process:
    return await login(url, tmp_path, "sales", *extra)


def _dead_database() -> str:
    return f"postgresql://shvya:x@127.0.0.1:{free_port()}/shvya"


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


@pytest.mark.parametrize(
    "command",
    [("whatsapp-web-status",), ("whatsapp-web-resume", "--account", "sales")],
    ids=["status", "resume"],
)
async def test_commands_that_need_postgresql_exit_3_naming_it_when_it_is_down(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    """Without PostgreSQL, `whatsapp-web-status` and `-resume` say which server and how to start
    it and exit 3 (a dependency out of reach), not 2 (bad arguments) and no traceback."""
    proc = await web_command(
        command[0], "http://127.0.0.1:9", tmp_path, *command[1:], DATABASE_URL=_dead_database()
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3, (out + err).decode()
    assert "cannot reach PostgreSQL" in err.decode() and "make infra" in err.decode()
    assert "Traceback" not in err.decode()


async def test_canary_exits_5_when_a_dispatch_replica_drives_the_account(
    db_url: str, tmp_path: Path
) -> None:
    """The canary refuses an account whose lease a running replica holds, with exit 5 (in use by
    another process), sending nothing."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        assert await db.acquire_lease(pool, "sales", "dispatch:replica-1", 600) is not None
    finally:
        await pool.close()
    proc = await web_command(
        "whatsapp-web-canary",
        "http://127.0.0.1:9",
        tmp_path,
        "--account",
        "sales",
        "--to",
        "+15550104001",
        DATABASE_URL=db_url,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 5, (out + err).decode()
    assert "driven by a running dispatch replica" in out.decode()


async def test_canary_exits_3_when_whatsapp_web_cannot_be_reached(tmp_path: Path) -> None:
    """A canary whose page does not load reports the failed step and exits 3, as the login."""
    proc = await web_command(
        "whatsapp-web-canary",
        f"http://127.0.0.1:{free_port()}",
        tmp_path,
        "--account",
        "sales",
        "--to",
        "+15550104002",
        DATABASE_URL=_dead_database(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 3, (out + err).decode()
    assert "FAIL could not load WhatsApp Web" in out.decode()
