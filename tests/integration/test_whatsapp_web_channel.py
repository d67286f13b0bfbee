"""The WhatsApp Web channel in real headless Chromium (Debian's, through Playwright) against a fake
WhatsApp Web served here that implements the selectors module's DOM contract: typing and
sending, browser reuse, one send at a time per account, logged-out and unknown-number errors,
and the `whatsapp-web-login` command."""

from __future__ import annotations

import asyncio
import os
import random
import struct
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from shvya_common.contracts import SendParams
from shvya_common.embedded import free_port
from shvya_common.errors import PermanentError
from shvya_dispatch.channels.whatsapp_web import (
    WhatsAppWebChannel,
    WhatsAppWebLoggedOut,
    phone_digits,
)
from shvya_dispatch.settings import DispatchSettings
from tests.integration.fake_whatsapp_web import FakeWhatsAppWeb

CHROMIUM = Path(os.environ.get("WHATSAPP_WEB_CHROMIUM_PATH", "/usr/bin/chromium"))
COMPANY = uuid.uuid4()


@pytest.fixture
async def fake() -> AsyncIterator[FakeWhatsAppWeb]:
    state = FakeWhatsAppWeb()
    runner = web.AppRunner(state.app())
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


def make_settings(fake: FakeWhatsAppWeb, tmp_path: Path, **overrides: Any) -> DispatchSettings:
    values: dict[str, Any] = {
        "whatsapp_web_enabled": True,
        "whatsapp_web_url": fake.url,
        "whatsapp_web_chromium_path": CHROMIUM,
        "whatsapp_web_profile_dir": tmp_path / "profiles",
        "whatsapp_web_typing_delay_min_ms": 1,
        "whatsapp_web_typing_delay_max_ms": 4,
        "whatsapp_web_load_timeout_seconds": 30,
        "whatsapp_web_sent_timeout_seconds": 15,
    }
    values.update(overrides)
    return DispatchSettings(_env_file=None, **values)


class RecordingRandom(random.Random):
    """A seeded Random that remembers the bounds of every delay drawn."""

    def __init__(self) -> None:
        super().__init__(7)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return super().uniform(a, b)


def params(to: str, text: str, company_id: uuid.UUID = COMPANY) -> SendParams:
    return SendParams(
        company_id=company_id,
        lead_id=uuid.uuid4(),
        channel="whatsapp_web",
        to=to,
        text=text,
        send_key=uuid.uuid4().hex,
    )


async def send(channel: WhatsAppWebChannel, p: SendParams) -> Any:
    return await channel.send(p.to, p.text, message_id=uuid.uuid4(), params=p)


async def test_send_types_the_text_clicks_send_and_returns_the_bubble_id(
    fake: FakeWhatsAppWeb, tmp_path: Path
) -> None:
    """A send opens /send?phone=<digits>, types each character with a delay drawn within the
    configured bounds, clicks send, and returns WhatsApp's id of the new outgoing bubble; the
    browser presents a desktop Chrome user agent and keeps its profile under the account."""
    rng = RecordingRandom()
    text = "Hello Riya!\nYour quote: https://acme.example/q?id=7 <b>not bold</b>"
    async with WhatsAppWebChannel(make_settings(fake, tmp_path), rng=rng) as channel:
        result = await send(channel, params("+91 98123-45678", text))

    sent = fake.sent()
    assert len(sent) == 1
    assert sent[0]["phone"] == "919812345678"
    assert sent[0]["text"] == text
    # Typed key by key (Shift+Enter adds one key press), not pasted.
    assert sent[0]["keys"] >= len(text)
    assert rng.bounds == [(1.0, 4.0)] * len(text)
    assert result.provider_message_id == sent[0]["id"]
    assert result.provider_message_id.startswith("true_919812345678@c.us_3EB0")
    assert result.meta == {"account": "default"}
    assert fake.user_agents and all(
        "HeadlessChrome" not in ua and "Chrome/" in ua for ua in fake.user_agents
    )
    assert (tmp_path / "profiles" / "default").is_dir()


async def test_sends_reuse_one_browser_per_account_and_keep_unicode(
    fake: FakeWhatsAppWeb, tmp_path: Path
) -> None:
    """Two sends on one account drive the same browser tab, and non-ASCII text (Devanagari,
    emoji) arrives exactly as written."""
    async with WhatsAppWebChannel(make_settings(fake, tmp_path)) as channel:
        await send(channel, params("+919812345678", "नमस्ते 👋 café"))
        await send(channel, params("+14155550123", "second"))
    sent = fake.sent()
    assert [s["text"] for s in sent] == ["नमस्ते 👋 café", "second"]
    assert sent[0]["tab"] == sent[1]["tab"]


async def test_concurrent_sends_on_one_account_run_one_at_a_time(
    fake: FakeWhatsAppWeb, tmp_path: Path
) -> None:
    """Three sends started together on one account never interleave: each chat is opened,
    typed and sent before the next chat opens."""
    phones = ["14155550101", "14155550102", "14155550103"]
    async with WhatsAppWebChannel(make_settings(fake, tmp_path)) as channel:
        results = await asyncio.gather(
            *(send(channel, params(f"+{p}", f"message for {p} " * 3)) for p in phones)
        )
    kinds = [kind for kind, _ in fake.events]
    assert kinds == ["opened", "sent"] * 3
    pairs = [fake.events[i : i + 2] for i in range(0, 6, 2)]
    for (_, opened), (_, sent) in pairs:
        assert opened["phone"] == sent["phone"]
        assert sent["text"] == f"message for {sent['phone']} " * 3
    assert sorted(s["phone"] for s in fake.sent()) == phones
    assert len({r.provider_message_id for r in results}) == 3


async def test_each_account_has_its_own_profile_and_browser(
    fake: FakeWhatsAppWeb, tmp_path: Path
) -> None:
    """Companies mapped to different accounts send from different browsers and profiles."""
    other = uuid.uuid4()
    settings = make_settings(
        fake, tmp_path, whatsapp_web_company_accounts=f"{COMPANY}=alpha,{other}=beta"
    )
    async with WhatsAppWebChannel(settings) as channel:
        first, second = await asyncio.gather(
            send(channel, params("+14155550111", "from alpha")),
            send(channel, params("+14155550112", "from beta", company_id=other)),
        )
    assert (first.meta["account"], second.meta["account"]) == ("alpha", "beta")
    tabs = {s["text"]: s["tab"] for s in fake.sent()}
    assert tabs["from alpha"] != tabs["from beta"]
    assert (tmp_path / "profiles" / "alpha").is_dir() and (tmp_path / "profiles" / "beta").is_dir()


async def test_logged_out_session_raises_a_clear_permanent_error(
    fake: FakeWhatsAppWeb, tmp_path: Path
) -> None:
    """When WhatsApp Web shows the QR login screen, the send fails permanently with an error
    that names the login command for the account, and nothing is typed."""
    fake.logged_in = False
    async with WhatsAppWebChannel(make_settings(fake, tmp_path)) as channel:
        with pytest.raises(WhatsAppWebLoggedOut) as info:
            await send(channel, params("+14155550123", "hi"))
    assert isinstance(info.value, PermanentError)
    assert "python -m shvya_dispatch whatsapp-web-login --account default" in str(info.value)
    assert fake.events == []


async def test_number_not_on_whatsapp_is_permanent_and_the_next_send_still_works(
    fake: FakeWhatsAppWeb, tmp_path: Path
) -> None:
    """The invalid-phone popup becomes a PermanentError naming the number; the same browser
    then sends to a valid number."""
    fake.unknown_numbers.add("15550001111")
    async with WhatsAppWebChannel(make_settings(fake, tmp_path)) as channel:
        with pytest.raises(PermanentError, match=r"\+15550001111 is not on WhatsApp"):
            await send(channel, params("+1 555 000 1111", "hi"))
        await send(channel, params("+14155550123", "still works"))
    assert [s["text"] for s in fake.sent()] == ["still works"]


async def test_no_outgoing_bubble_after_clicking_send_is_not_retried(
    fake: FakeWhatsAppWeb, tmp_path: Path
) -> None:
    """If the bubble never appears after send was clicked, the error is permanent (the message
    may have left, so a retry could duplicate it)."""
    fake.swallowing_numbers.add("14155550123")
    settings = make_settings(fake, tmp_path, whatsapp_web_sent_timeout_seconds=1)
    async with WhatsAppWebChannel(settings) as channel:
        with pytest.raises(PermanentError, match="may have been sent"):
            await send(channel, params("+14155550123", "lost"))


async def test_a_closed_browser_is_reopened_on_the_next_send(
    fake: FakeWhatsAppWeb, tmp_path: Path
) -> None:
    """If the account's browser goes away between sends, the next send opens a new one."""
    async with WhatsAppWebChannel(make_settings(fake, tmp_path)) as channel:
        await send(channel, params("+14155550123", "one"))
        context = channel._accounts["default"].context
        assert context is not None
        await context.close()
        await send(channel, params("+14155550123", "two"))
    first, second = fake.sent()
    assert second["text"] == "two"
    assert first["tab"] != second["tab"]


async def test_missing_chromium_stops_start_up_with_the_setting_to_fix() -> None:
    """A Chromium path that does not exist fails at start, naming WHATSAPP_WEB_CHROMIUM_PATH."""
    settings = DispatchSettings(
        _env_file=None, whatsapp_web_chromium_path=Path("/nonexistent/chromium")
    )
    with pytest.raises(RuntimeError, match="WHATSAPP_WEB_CHROMIUM_PATH"):
        await WhatsAppWebChannel(settings).start()


def test_phone_digits() -> None:
    """Numbers are reduced to digits; anything too short or long to be E.164 is permanent."""
    assert phone_digits("+91 98123-45678") == "919812345678"
    with pytest.raises(PermanentError):
        phone_digits("12345")
    with pytest.raises(PermanentError):
        phone_digits("+1234567890123456")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_login_command_saves_the_qr_and_returns_once_linked(
    fake: FakeWhatsAppWeb, tmp_path: Path
) -> None:
    """`python -m shvya_dispatch whatsapp-web-login --account NAME` saves the QR as a PNG and
    prints its path, saves it again when the QR refreshes, and exits 0 once the page shows the
    chat list."""
    fake.logged_in = False
    qr_path = tmp_path / "qr" / "sales.png"
    env = {
        **os.environ,
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
        "sales",
        "--qr-path",
        str(qr_path),
        "--settle-seconds",
        "0",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert f"QR code saved to {qr_path}" in first
        width, height = png_size(qr_path)
        assert width >= 264 and height >= 264
        before = qr_path.read_bytes()

        fake.qr_ref = "2@fakeQrRef2"
        second = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert f"QR code saved to {qr_path}" in second
        assert qr_path.read_bytes() != before

        fake.logged_in = True
        rest, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "'sales' is logged in" in rest.decode()
    assert (tmp_path / "profiles" / "sales").is_dir()


async def test_login_command_times_out_with_a_clear_message(
    fake: FakeWhatsAppWeb, tmp_path: Path
) -> None:
    """If nobody scans the QR in time, the command exits 1 and says so."""
    fake.logged_in = False
    env = {
        **os.environ,
        "WHATSAPP_WEB_URL": fake.url,
        "WHATSAPP_WEB_CHROMIUM_PATH": str(CHROMIUM),
        "WHATSAPP_WEB_PROFILE_DIR": str(tmp_path / "profiles"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shvya_dispatch",
        "whatsapp-web-login",
        "--account",
        "sales",
        "--timeout",
        "2",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 1
    assert "was not linked within 2 s" in err.decode()
    assert "QR code saved to" in out.decode()
    assert (tmp_path / "profiles" / "sales-qr.png").is_file()
