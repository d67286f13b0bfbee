"""A fake WhatsApp Web for the channel's tests: a small aiohttp app that serves a page and, behind
`fake_wpp.js` (a fake of wa-js's `WPP` that the channel injects as it injects the real bundle),
plays WhatsApp's part for each linked device: numbers that exist, sends that are acknowledged
at once, late, never or refused (the reach-out timelock), incoming messages, reactions, edits,
delivery and read acknowledgements, QR codes that go idle and refresh, pairing codes, logout,
bans and a session opened elsewhere. The test drives it through the methods below; every
change reaches the page through a long-poll, so tests wait for observable states, never for
time to pass."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

FAKE_WPP = Path(__file__).with_name("fake_wpp.js")

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>WhatsApp</title></head>
<body><div id="app">WhatsApp</div></body></html>"""

Behaviour = Literal["ok", "never", "hold", "fail", "timelock", "throw", "throw_after"]


@dataclass
class Device:
    """One linked (or linking) browser profile."""

    id: str
    linked: bool
    me: str | None
    mode: str = "MAIN"
    online: bool = True
    main_ready: bool = True
    timelocked: bool = False
    logout_reason: str | None = None
    qr_number: int = 1
    qr_idle: bool = False
    qr_refreshes: int = 0
    pairing_phone: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    user_agent: str = ""
    # chat wid -> messages (both directions), for getMessages / catch-up.
    chats: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unread: dict[str, int] = field(default_factory=dict)

    @property
    def qr(self) -> str:
        return f"2@fakeQr{self.qr_number},{self.id},key=="

    def state(self) -> dict[str, Any]:
        return {
            "linked": self.linked,
            "me": self.me,
            "mode": self.mode if self.linked or self.mode in ("TOS_BLOCK",) else "QR",
            "online": self.online,
            "mainReady": self.main_ready,
            "timelocked": self.timelocked,
            "logoutReason": self.logout_reason,
            "qr": None if self.linked else self.qr,
            "qrIdle": self.qr_idle,
        }


class FakeWhatsAppWeb:
    """The fake's state and the test's handles on it."""

    def __init__(self, *, me: str = "15550001111@c.us", linked: bool = True) -> None:
        self.url = ""
        self.default_me = me
        self.new_devices_linked = linked
        self.devices: dict[str, Device] = {}
        self.unknown_numbers: set[str] = set()
        self.lids: dict[str, str] = {}
        # How sends to a number (digits) go; default "ok".
        self.behaviour: dict[str, Behaviour] = {}
        self.lookups_fail = False
        self.sent: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.user_agents: list[str] = []
        self._seq = itertools.count(1)
        self._changed = asyncio.Condition()
        self._held: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._pairing = itertools.count(1)

    # --- the test's handles ---------------------------------------------------------------

    def device(self, index: int = 0) -> Device:
        return list(self.devices.values())[index]

    async def wait_device(self, count: int = 1, timeout: float = 30) -> Device:
        def seen() -> bool:
            return len(self.devices) >= count

        await self._wait(seen, timeout, f"{count} device(s) to open WhatsApp Web")
        return self.device(count - 1)

    async def wait_sent(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        def seen() -> bool:
            return len(self.sent) >= count

        await self._wait(seen, timeout, f"{count} message(s) sent")
        return self.sent

    async def wait_attempts(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        def seen() -> bool:
            return len(self.attempts) >= count

        await self._wait(seen, timeout, f"{count} send attempt(s)")
        return self.attempts

    async def _wait(self, check: Any, timeout: float, what: str) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(check), timeout)
            except TimeoutError:
                raise AssertionError(f"timed out waiting for {what}") from None

    async def push(self, device: Device, kind: str, **data: Any) -> None:
        async with self._changed:
            device.events.append({"seq": next(self._seq), "kind": kind, **data})
            self._changed.notify_all()

    async def push_state(self, device: Device) -> None:
        await self.push(device, "state", state=device.state())

    async def receive(
        self,
        device: Device,
        phone: str,
        text: str | None = None,
        *,
        msg_id: str | None = None,
        type: str = "chat",
        caption: str | None = None,
        mimetype: str | None = None,
        filename: str | None = None,
        notify_name: str | None = "Lead",
        quoted: str | None = None,
        t: int | None = None,
        lid: str | None = None,
        deliver: bool = True,
    ) -> str:
        """A lead writes to the device's account (`deliver` False only stores it, as if it
        arrived while the page was closed); returns its id."""
        chat = lid or f"{phone.lstrip('+')}@c.us"
        if lid:
            self.lids[lid] = f"{phone.lstrip('+')}@c.us"
        msg_id = msg_id or f"false_{chat}_{next(self._seq):06d}ABCDEF"
        msg = {
            "id": msg_id,
            "from": chat,
            "to": device.me,
            "type": type,
            "body": text if type == "chat" else None,
            "caption": caption,
            "mimetype": mimetype,
            "filename": filename,
            "t": t or int(time.time()),
            "notifyName": notify_name,
            "ack": 1,
        }
        if quoted is not None:
            fromme, _remote, stanza = quoted.split("_", 2)
            msg["quotedStanzaID"] = stanza
            msg["quotedParticipant"] = device.me if fromme == "true" else chat
        device.chats.setdefault(chat, []).append(msg)
        device.unread[chat] = device.unread.get(chat, 0) + 1
        if deliver:
            await self.push(device, "message", msg=msg)
        return msg_id

    async def react(
        self, device: Device, phone: str, target: str, emoji: str, *, lid: str | None = None
    ) -> str:
        """The lead reacts to `target` (an id as the page names it: in a chat addressed by the
        lead's privacy id `lid`, `<fromMe>_<lid>_<stanza>`); returns the reaction's id."""
        chat = lid or f"{phone.lstrip('+')}@c.us"
        if lid:
            self.lids[lid] = f"{phone.lstrip('+')}@c.us"
        reaction_id = f"false_{chat}_{next(self._seq):06d}REACT"
        await self.push(
            device,
            "reaction",
            id=reaction_id,
            msgId=target,
            emoji=emoji,
            sender=chat,
            t=int(time.time()),
        )
        return reaction_id

    def _message(self, device: Device, msg_id: str) -> dict[str, Any]:
        for messages in device.chats.values():
            for msg in messages:
                if msg["id"] == msg_id:
                    return msg
        raise KeyError(msg_id)

    async def edit(self, device: Device, msg_id: str, text: str) -> str:
        """The lead edits a message of theirs, as wa-js reports it: the original message model
        changes in place (its `t` stays the original's) and carries the edit's own key and time
        (`latestEditMsgKey`, `latestEditSenderTimestampMs`); the event's `chat` is the
        message's `to` (this account). Returns the edit's key."""
        msg = self._message(device, msg_id)
        edit_key = f"false_{msg['from']}_{next(self._seq):06d}EDIT"
        msg["body"] = text
        msg["latestEditMsgKey"] = edit_key
        msg["latestEditSenderTimestampMs"] = int(time.time() * 1000)
        await self.push(device, "edit", chat=msg["to"], id=msg_id, msg=dict(msg))
        return edit_key

    async def revoke(self, device: Device, msg_id: str) -> str:
        """The lead deletes a message of theirs for everyone; returns the revoke's own id."""
        msg = self._message(device, msg_id)
        revoke_id = f"false_{msg['from']}_{next(self._seq):06d}REVOKE"
        await self.push(
            device, "revoke", id=revoke_id, refId=msg_id, **{"from": msg["from"], "to": msg["to"]}
        )
        return revoke_id

    async def ack(self, device: Device, ids: list[str], ack: int) -> None:
        chat = ids[0].split("_")[1]
        await self.push(device, "ack", ack=ack, chat=chat, ids=ids)

    async def raw(self, device: Device, event: str, data: Any) -> None:
        """Any wa-js event, as WPP.on listeners get it (unknown kinds, bad shapes)."""
        await self.push(device, "raw", event=event, data=data)

    async def release(self, msg_id: str, ack: int = 1) -> None:
        """Answer a held send (behaviour 'hold') with this acknowledgement."""
        future = self._held.pop(msg_id)
        future.set_result({"id": msg_id, "ack": ack, "result": "OK" if ack >= 1 else "ERROR"})

    async def logout(self, device: Device, reason: str = "user_initiated") -> None:
        device.linked = False
        device.logout_reason = reason
        device.qr_number += 1
        await self.push_state(device)

    async def link(self, device: Device, me: str | None = None) -> None:
        """The phone scanned the QR (or typed the pairing code)."""
        device.linked = True
        device.me = me or self.default_me
        device.mode = "MAIN"
        device.main_ready = True
        device.qr_idle = False
        await self.push_state(device)

    async def idle_qr(self, device: Device) -> None:
        device.qr_idle = True
        await self.push_state(device)

    async def set_mode(
        self, device: Device, mode: str, *, online: bool = True, main_ready: bool = True
    ) -> None:
        device.mode = mode
        device.online = online
        device.main_ready = main_ready
        await self.push_state(device)

    async def timelock(self, device: Device, on: bool = True) -> None:
        device.timelocked = on
        await self.push_state(device)

    # --- the app ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/api/events", self._events)
        for name in (
            "hello",
            "query",
            "lid",
            "send",
            "lookup",
            "refresh_qr",
            "pairing_code",
            "use_here",
            "chats",
            "messages",
        ):
            app.router.add_post(f"/api/{name}", self._api(name))
        app.on_shutdown.append(self._shutdown)
        return app

    async def _shutdown(self, _app: web.Application) -> None:
        for future in self._held.values():
            if not future.done():
                future.cancel()

    async def _page(self, request: web.Request) -> web.Response:
        self.user_agents.append(request.headers.get("User-Agent", ""))
        return web.Response(text=PAGE, content_type="text/html")

    async def _events(self, request: web.Request) -> web.Response:
        device = self.devices.get(request.query.get("device", ""))
        since = int(request.query.get("since", "0"))
        if device is None:
            return web.json_response({"events": []})

        def fresh() -> list[dict[str, Any]]:
            return [e for e in device.events if e["seq"] > since]

        async with self._changed:
            if not fresh():
                try:
                    await asyncio.wait_for(self._changed.wait(), 1.0)
                except TimeoutError:
                    pass
        return web.json_response({"events": fresh()})

    def _api(self, name: str):  # type: ignore[no-untyped-def]
        async def handler(request: web.Request) -> web.Response:
            body = json.loads(await request.text())
            if name == "hello":
                return web.json_response(await self._hello(body))
            device = self.devices[body["device"]]
            answer = await getattr(self, f"_on_{name}")(device, body)
            async with self._changed:
                self._changed.notify_all()
            return web.json_response(answer)

        return handler

    async def _hello(self, body: dict[str, Any]) -> dict[str, Any]:
        device = self.devices.get(body["device"])
        if device is None:
            device = Device(
                id=body["device"],
                linked=self.new_devices_linked,
                me=self.default_me if self.new_devices_linked else None,
                mode="MAIN" if self.new_devices_linked else "QR",
                user_agent=body.get("userAgent", ""),
            )
            async with self._changed:
                self.devices[device.id] = device
                self._changed.notify_all()
        seq = device.events[-1]["seq"] if device.events else 0
        return {"state": device.state(), "seq": seq}

    async def _on_query(self, device: Device, body: dict[str, Any]) -> dict[str, Any]:
        digits = body["wid"].split("@")[0]
        if digits in self.unknown_numbers:
            return {"exists": False}
        return {"exists": True, "wid": f"{digits}@c.us"}

    async def _on_lid(self, device: Device, body: dict[str, Any]) -> dict[str, Any]:
        return {"phone": self.lids.get(body["lid"])}

    async def _on_send(self, device: Device, body: dict[str, Any]) -> dict[str, Any]:
        digits = body["wid"].split("@")[0]
        msg_id = body["id"]
        attempt = {"device": device.id, "digits": digits, **body}
        self.attempts.append(attempt)
        behaviour = self.behaviour.get(digits, "ok")
        if device.timelocked:
            behaviour = "timelock"
        if behaviour == "throw":
            return {"error": "chat not found", "code": "chat_not_found"}
        record = {
            "id": msg_id,
            "from": device.me,
            "to": body["wid"],
            "type": "chat",
            "body": body["text"],
            "t": int(time.time()),
            "ack": 0,
        }
        device.chats.setdefault(body["wid"], []).append(record)
        if behaviour == "throw_after":
            return {"error": "socket closed", "code": None}
        if behaviour == "timelock":
            record["ack"] = -1
            device.timelocked = True
            return {"id": msg_id, "ack": -1, "result": "ERROR_UNKNOWN", "state": device.state()}
        if behaviour == "fail":
            record["ack"] = -1
            return {"id": msg_id, "ack": -1, "result": "ERROR_UNKNOWN"}
        if behaviour in ("never", "hold"):
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._held[msg_id] = future
            async with self._changed:
                self._changed.notify_all()
            answer = await future  # "never" is never released
            record["ack"] = answer["ack"]
            if answer["ack"] >= 1:
                self.sent.append({**attempt, "ack": answer["ack"]})
            return answer
        record["ack"] = 1
        self.sent.append({**attempt, "ack": 1})
        return {"id": msg_id, "ack": 1, "result": "OK"}

    def reset(self) -> None:
        """Forget behaviours and drop held sends (their pages get an error)."""
        self.behaviour.clear()
        self.unknown_numbers.clear()
        for future in self._held.values():
            if not future.done():
                future.cancel()
        self._held.clear()

    def held(self) -> list[str]:
        return list(self._held)

    async def wait_held(self, count: int = 1, timeout: float = 30) -> list[str]:
        def seen() -> bool:
            return len(self._held) >= count

        await self._wait(seen, timeout, f"{count} held send(s)")
        return self.held()

    async def _on_lookup(self, device: Device, body: dict[str, Any]) -> dict[str, Any]:
        if self.lookups_fail:
            # The page's store could not be read (WhatsApp Web mid-reload): says nothing.
            return {"error": "Cannot read properties of undefined (reading 'msgs')", "code": None}
        for messages in device.chats.values():
            for msg in messages:
                if msg["id"] == body["id"]:
                    return {"msg": msg}
        return {"msg": None}

    async def _on_refresh_qr(self, device: Device, body: dict[str, Any]) -> dict[str, Any]:
        if device.linked:
            return {"qr": None}
        device.qr_number += 1
        device.qr_refreshes += 1
        device.qr_idle = False
        await self.push_state(device)
        return {"qr": device.qr}

    async def _on_pairing_code(self, device: Device, body: dict[str, Any]) -> dict[str, Any]:
        device.pairing_phone = body["phone"]
        n = next(self._pairing)
        return {"code": f"ABCD-{n:04d}"}

    async def _on_use_here(self, device: Device, body: dict[str, Any]) -> dict[str, Any]:
        device.mode = "MAIN"
        await self.push_state(device)
        return {"ok": True}

    async def _on_chats(self, device: Device, body: dict[str, Any]) -> dict[str, Any]:
        chats = [
            {"id": chat, "t": max(m["t"] for m in msgs), "unreadCount": device.unread.get(chat, 0)}
            for chat, msgs in device.chats.items()
            if msgs
        ]
        return {"chats": chats}

    async def _on_messages(self, device: Device, body: dict[str, Any]) -> dict[str, Any]:
        msgs = device.chats.get(body["chat"], [])
        return {"msgs": msgs[-int(body["count"]) :]}


async def serve(fake: FakeWhatsAppWeb) -> web.AppRunner:
    """Start the fake on a free loopback port; `fake.url` is set."""
    from shvya_common.embedded import free_port

    runner = web.AppRunner(fake.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake.url = f"http://127.0.0.1:{port}"
    return runner
