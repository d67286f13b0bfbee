"""The WhatsApp Web channel in real headless Chromium (Debian's, through Playwright) against a fake
WhatsApp Web: the channel injects `fake_wpp.js` exactly where it injects the pinned wa-js, so
these tests run the same `WPP` calls as the real page. One fake and one channel serve the module
(one browser per account), each test leaves the device linked and the fake's behaviours reset."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shvya_common.contracts import SendParams
from shvya_common.errors import RetryableError
from shvya_dispatch.channels.errors import (
    AccountPausedError,
    SendOutcomeUnknown,
    UndeliverableError,
)
from shvya_dispatch.channels.whatsapp_web import (
    WaSession,
    WhatsAppWebChannel,
    WhatsAppWebLoggedOut,
    WhatsAppWebRefused,
    phone_digits,
)
from shvya_dispatch.settings import DispatchSettings
from tests.integration.fake_whatsapp_web import FAKE_WPP, FakeWhatsAppWeb, serve

CHROMIUM = Path(os.environ.get("WHATSAPP_WEB_CHROMIUM_PATH", "/usr/bin/chromium"))
COMPANY = uuid.uuid4()


def make_settings(url: str, profiles: Path, **overrides: Any) -> DispatchSettings:
    values: dict[str, Any] = {
        "whatsapp_web_enabled": True,
        "whatsapp_web_url": url,
        "whatsapp_web_chromium_path": CHROMIUM,
        "whatsapp_web_wa_js_path": FAKE_WPP,
        "whatsapp_web_profile_dir": profiles,
        "whatsapp_web_typing_delay_min_ms": 1,
        "whatsapp_web_typing_delay_max_ms": 4,
        "whatsapp_web_load_timeout_seconds": 30,
        "whatsapp_web_sent_timeout_seconds": 3,
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


class World:
    def __init__(self, fake: FakeWhatsAppWeb, channel: WhatsAppWebChannel, rng: RecordingRandom):
        self.fake = fake
        self.channel = channel
        self.rng = rng
        self.events: list[tuple[str, str, Any]] = []

    async def on_event(self, session: WaSession, kind: str, data: Any) -> None:
        self.events.append((session.account, kind, data))

    async def wait_event(
        self, kind: str, timeout: float = 20, where: Callable[[Any], bool] = lambda _d: True
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for _account, k, data in self.events:
                if k == kind and where(data):
                    return data
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind!r} event; saw {[k for _, k, _ in self.events]}")


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    fake = FakeWhatsAppWeb()
    runner = await serve(fake)
    rng = RecordingRandom()
    settings = make_settings(fake.url, tmp_path_factory.mktemp("profiles"))
    channel = WhatsAppWebChannel(settings, rng=rng)
    state = World(fake, channel, rng)
    channel.on_event = state.on_event
    async with channel:
        yield state
    await runner.cleanup()


@pytest.fixture(autouse=True)
async def clean(world: World) -> AsyncIterator[None]:
    yield
    fake = world.fake
    fake.reset()
    world.events.clear()
    world.rng.bounds.clear()
    world.channel._local_refusals.clear()
    for device in fake.devices.values():
        if device.timelocked:
            await fake.timelock(device, on=False)  # the page learns it, as from WhatsApp
        if not device.linked or device.mode != "MAIN":
            await fake.link(device)
    for session in world.channel.sessions.values():
        if session.alive:
            await session.wait_until(lambda s: s.state()[0] == "connected", 20)


def params(to: str, text: str, company_id: uuid.UUID = COMPANY, **kw: Any) -> SendParams:
    return SendParams(
        company_id=company_id,
        lead_id=uuid.uuid4(),
        channel="whatsapp_web",
        to=to,
        text=text,
        send_key=uuid.uuid4().hex,
        **kw,
    )


async def send(channel: WhatsAppWebChannel, p: SendParams) -> Any:
    return await channel.send(p.to, p.text, message_id=uuid.uuid4(), params=p)


async def test_a_send_is_sent_on_the_servers_ack_with_whatsapps_own_id(world: World) -> None:
    """A send looks the number up, takes WhatsApp's message id, shows "typing…" for a time drawn
    per character within the configured bounds, and is sent only with the server's
    acknowledgement; the id it returns is that message's, and the browser presents a desktop
    Chrome user agent."""
    text = "Hello Riya!\nYour quote: https://acme.example/q?id=7 <b>not bold</b> ✓ 🙂"
    result = await send(world.channel, params("+91 98123-45678", text))

    sent = world.fake.sent
    assert len(sent) == 1
    assert sent[0]["digits"] == "919812345678"
    assert sent[0]["wid"] == "919812345678@c.us"
    assert sent[0]["text"] == text
    assert sent[0]["waitForAck"] is True and sent[0]["linkPreview"] is False
    assert world.rng.bounds == [(1.0, 4.0)] * len(text)
    assert len(text) * 1 <= sent[0]["delay"] <= len(text) * 4
    assert result.provider_message_id == sent[0]["id"]
    assert result.provider_message_id.startswith("true_919812345678@c.us_3EB0")
    assert result.meta == {"account": "default"}
    agent = world.fake.device().user_agent
    assert "HeadlessChrome" not in agent and "Chrome/" in agent


async def test_number_not_on_whatsapp_is_undeliverable_and_nothing_is_sent(world: World) -> None:
    """A number WhatsApp does not know is refused as undeliverable before any send, and the
    next send on the same browser still works."""
    world.fake.unknown_numbers.add("15550009999")
    with pytest.raises(UndeliverableError, match="not on WhatsApp"):
        await send(world.channel, params("+15550009999", "hi"))
    assert world.fake.attempts == [] or all(
        a["digits"] != "15550009999" for a in world.fake.attempts
    )
    await send(world.channel, params("+15550001234", "still works"))
    assert world.fake.sent[-1]["text"] == "still works"


async def test_no_ack_in_time_is_unknown_with_the_id_it_would_carry(world: World) -> None:
    """When WhatsApp's server never acknowledges, the send is an unknown outcome (never
    retried) that carries the id the message would have, for a late acknowledgement."""
    world.fake.behaviour["15550002001"] = "never"
    with pytest.raises(SendOutcomeUnknown, match="did not acknowledge") as info:
        await send(world.channel, params("+15550002001", "hello?"))
    held = world.fake.held()
    assert info.value.provider_message_id in held
    assert info.value.meta["account"] == "default"


async def test_the_page_dying_mid_send_is_unknown(world: World) -> None:
    """A page that dies while the send is in flight cannot tell whether it left: unknown, and
    the next send opens a fresh browser."""
    world.fake.behaviour["15550002002"] = "hold"
    task = asyncio.create_task(send(world.channel, params("+15550002002", "mid-send")))
    await world.fake.wait_held(1)
    session = world.channel.sessions["default"]
    assert session.page is not None
    await session.page.close()
    with pytest.raises(SendOutcomeUnknown, match="page failed"):
        await task
    await send(world.channel, params("+15550002003", "after the crash"))
    assert world.fake.sent[-1]["text"] == "after the crash"


async def test_an_error_before_the_message_exists_is_retryable_after_it_unknown(
    world: World,
) -> None:
    """When wa-js's send throws, the page is asked for the message by its id: absent means
    nothing left (retryable), present but unacknowledged means it may leave (unknown)."""
    world.fake.behaviour["15550002004"] = "throw"
    with pytest.raises(RetryableError, match="did not send"):
        await send(world.channel, params("+15550002004", "never queued"))
    world.fake.behaviour["15550002005"] = "throw_after"
    with pytest.raises(SendOutcomeUnknown):
        await send(world.channel, params("+15550002005", "queued, then the socket went"))


async def test_a_lookup_that_fails_proves_nothing_and_the_send_is_unknown(world: World) -> None:
    """After a send that threw, only wa-js's own "message not found" means it never left: a
    lookup that fails for another reason (the page's store unreadable) is no proof, so the
    send is unknown and not repeated, instead of retried into a second copy."""
    world.fake.behaviour["15550002006"] = "throw"
    world.fake.lookups_fail = True
    with pytest.raises(SendOutcomeUnknown, match="may have left"):
        await send(world.channel, params("+15550002006", "sent or not?"))


async def test_refusals_fail_the_message_and_pause_the_account_after_three(
    world: World,
) -> None:
    """A send the server refuses is never recorded as sent; three refusals in a row pause the
    account as restricted instead of going on into the restriction."""
    world.fake.behaviour["15550003001"] = "fail"
    for _ in range(2):
        with pytest.raises(WhatsAppWebRefused):
            await send(world.channel, params("+15550003001", "refused"))
    with pytest.raises(AccountPausedError) as info:
        await send(world.channel, params("+15550003001", "refused"))
    assert info.value.kind == "restricted" and info.value.scope == "all"
    assert world.fake.sent == [] or all(s["digits"] != "15550003001" for s in world.fake.sent)


async def test_the_reach_out_timelock_pauses_new_contacts(world: World) -> None:
    """A refusal under WhatsApp's reach-out timelock (463) pauses the account's new contacts,
    read from WhatsApp Web's own timelock state."""
    world.fake.behaviour["15550004001"] = "timelock"
    with pytest.raises(AccountPausedError) as info:
        await send(world.channel, params("+15550004001", "cold hello"))
    assert (info.value.kind, info.value.code, info.value.scope) == (
        "timelock",
        463,
        "new_contacts",
    )


async def test_a_logged_out_session_raises_with_whatsapps_reason(world: World) -> None:
    """A logged-out session sends nothing and says so with WhatsApp's logout reason and the
    command that links the account again."""
    device = world.fake.device()
    attempts = len(world.fake.attempts)
    await world.fake.logout(device, "md_opt_out")
    await world.wait_event("logout")
    with pytest.raises(WhatsAppWebLoggedOut) as info:
        await send(world.channel, params("+15550005001", "hi"))
    assert info.value.logout_reason == "md_opt_out"
    assert "shvya whatsapp-web login --account default" in str(info.value)
    assert len(world.fake.attempts) == attempts


async def test_a_session_open_elsewhere_is_taken_back(world: World) -> None:
    """When WhatsApp Web was opened in another browser, the channel clicks "Use here" and the
    retried send goes through."""
    await world.fake.set_mode(world.fake.device(), "CONFLICT")
    await world.wait_event("stream_mode", where=lambda d: d["mode"] == "CONFLICT")
    with pytest.raises(RetryableError, match="another browser"):
        await send(world.channel, params("+15550006001", "hi"))
    await send(world.channel, params("+15550006001", "taken back"))
    assert world.fake.sent[-1]["text"] == "taken back"


async def test_sends_on_one_account_run_one_at_a_time(world: World) -> None:
    """While one send waits for its acknowledgement, a second one on the same account does not
    start; it goes once the first is answered."""
    world.fake.behaviour["15550007001"] = "hold"
    first = asyncio.create_task(send(world.channel, params("+15550007001", "first")))
    (held,) = await world.fake.wait_held(1)
    second = asyncio.create_task(send(world.channel, params("+15550007002", "second")))
    await asyncio.sleep(0)  # the second is queued on the account's lock, not in the page
    assert [a["text"] for a in world.fake.attempts[-1:]] == ["first"]
    await world.fake.release(held, ack=1)
    assert (await first).provider_message_id == held
    await second
    assert [s["text"] for s in world.fake.sent[-2:]] == ["first", "second"]


async def test_incoming_messages_reactions_and_acks_reach_python(world: World) -> None:
    """What the lead does arrives as events: a message (with its phone, sender name and the
    message it quotes), a reaction, delivery/read acknowledgements; a privacy id (LID) is
    resolved to the phone number."""
    out = await send(world.channel, params("+15550008001", "our offer"))
    device = world.fake.device()
    msg_id = await world.fake.receive(
        device, "+15550008001", "yes please", quoted=out.provider_message_id
    )
    message = await world.wait_event("message")
    assert message["id"] == msg_id and message["phone"] == "15550008001@c.us"
    assert message["body"] == "yes please" and message["notifyName"] == "Lead"
    assert message["quoted"]["id"] == out.provider_message_id.split("_", 2)[2]
    await world.fake.react(device, "+15550008001", out.provider_message_id, "👍")
    reaction = await world.wait_event("reaction")
    assert reaction["msgId"] == out.provider_message_id and reaction["emoji"] == "👍"
    await world.fake.ack(device, [out.provider_message_id], 3)
    ack = await world.wait_event("ack")
    assert ack == {
        "ack": 3,
        "chat": "15550008001@c.us",
        "phone": "15550008001@c.us",
        "ids": [out.provider_message_id],
    }
    world.events.clear()
    await world.fake.receive(device, "+15550008002", "via lid", lid="98765432101234@lid")
    via_lid = await world.wait_event("message")
    assert via_lid["phone"] == "15550008002@c.us" and via_lid["chat"] == "98765432101234@lid"


async def test_each_account_has_its_own_profile_and_browser(world: World) -> None:
    """Companies mapped to different accounts send through different profiles (devices)."""
    other = uuid.uuid4()
    world.channel.settings = world.channel.settings.model_copy(
        update={"whatsapp_web_company_accounts": {str(other): "sales"}}
    )
    try:
        result = await send(world.channel, params("+15550009001", "from sales", company_id=other))
    finally:
        world.channel.settings = world.channel.settings.model_copy(
            update={"whatsapp_web_company_accounts": {}}
        )
    assert result.meta == {"account": "sales"}
    assert len(world.fake.devices) == 2
    assert world.fake.sent[-1]["device"] != world.fake.device(0).id
    assert (world.channel.settings.whatsapp_web_profile_dir / "sales").is_dir()
    await world.channel.close_session("sales")


def test_phone_digits_refuse_what_is_not_a_number() -> None:
    """Only international numbers of 7–15 digits are accepted."""
    assert phone_digits("+91 98123-45678") == "919812345678"
    with pytest.raises(Exception, match="not an international phone number"):
        phone_digits("12")


async def test_missing_chromium_or_wa_js_stops_start_up_with_the_setting_to_fix(
    tmp_path: Path,
) -> None:
    """Dispatch refuses to start WhatsApp Web without Chromium or the wa-js bundle, naming the
    setting that fixes it."""
    missing = make_settings(
        "http://127.0.0.1:9", tmp_path, whatsapp_web_chromium_path=tmp_path / "none"
    )
    with pytest.raises(RuntimeError, match="WHATSAPP_WEB_CHROMIUM_PATH"):
        await WhatsAppWebChannel(missing).start()
    no_js = make_settings("http://127.0.0.1:9", tmp_path, whatsapp_web_wa_js_path=tmp_path / "x.js")
    with pytest.raises(RuntimeError, match="make install"):
        await WhatsAppWebChannel(no_js).start()
