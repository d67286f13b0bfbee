"""The WhatsApp Web commands of `python -m shvya_dispatch`:

    whatsapp-web-login  --account NAME [--phone +NUMBER]   link an account (QR, or pairing code)
    whatsapp-web-status [--account NAME]                    leases, health, pauses, warm-up
    whatsapp-web-resume --account NAME                      lift an account's pause by hand
    whatsapp-web-canary --account NAME --to +NUMBER         one real send, step by step

A login for an account that a running dispatch replica drives (a live lease) is asked of that
replica through the database, so nobody has to stop dispatch: the command shows the QR codes
(or the pairing code) the replica stores, until the account is linked. Otherwise the command
takes the lease itself, opens the profile here, and gives it back when done. Every QR code is
also saved as a PNG and drawn in the terminal, and stored (`whatsapp_web_logins`) for the
console; without a reachable database the login still works from the PNG file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from shvya_common.db import create_pool
from shvya_common.whatsapp import web_accounts as db
from shvya_dispatch.channels.whatsapp_web import (
    LoginHooks,
    LoginTimeout,
    LoginUnreachable,
    ProfileBusy,
    WaSession,
    check_account,
    login,
    phone_digits,
    qr_terminal,
)
from shvya_dispatch.settings import DispatchSettings

Say = Callable[[str], None]
POLL_SECONDS = 0.5


async def _pool(settings: DispatchSettings, say: Say) -> asyncpg.Pool | None:
    try:
        return await asyncio.wait_for(create_pool(settings.database_url, 1, 2), 5)
    except Exception as err:
        say(f"note: no database ({type(err).__name__}); the QR is not stored for the console")
        return None


def _save_png(path: Path, png: bytes) -> str:
    """Write the PNG atomically (a viewer never sees half); returns where it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(png)
    tmp.replace(path)
    return str(path.resolve())


async def run_login(
    settings: DispatchSettings,
    account: str,
    *,
    phone: str | None,
    qr_path: Path | None,
    timeout: float | None,
    settle_seconds: float,
    say: Say,
    show_terminal: bool = True,
) -> int:
    """0 linked, 1 not linked in time, 2 could not try, 3 WhatsApp Web unreachable, 5 the
    account's browser profile is in use (the same numbers as the `shvya` commands')."""
    check_account(account)
    if phone is not None:
        phone = phone_digits(phone)
    wait = timeout if timeout is not None else settings.whatsapp_web_login_timeout_seconds
    qr_path = qr_path or settings.whatsapp_web_profile_dir / f"{account}-qr.png"
    pool = await _pool(settings, say)
    owner = f"cli:{socket.gethostname()}:{os.getpid()}"
    try:
        if pool is not None:
            row = await db.read_account(pool, account)
            if row is not None and row.lease_live and row.owner and row.owner != owner:
                return await _login_through(pool, row.owner, account, phone, qr_path, wait, say)
            if await db.acquire_lease(pool, account, owner, wait + 120) is None:
                say(f"error: another process took account {account!r} just now; try again")
                return 2

        async def on_qr(text: str, png: bytes) -> None:
            if show_terminal:
                say(qr_terminal(text))
            if pool is not None:
                await db.store_qr(pool, account, text, png)

        async def on_code(code: str) -> None:
            say(
                f"Pairing code for account {account!r}: {code}  (on the phone: WhatsApp > "
                "Settings > Linked devices > Link a device > Link with phone number instead)"
            )
            if pool is not None:
                await db.store_pairing_code(pool, account, code)

        try:
            outcome = await login(
                settings,
                account,
                qr_path=qr_path,
                phone=phone,
                wait_seconds=wait,
                settle_seconds=settle_seconds,
                hooks=LoginHooks(on_qr=on_qr, on_code=on_code, say=say),
            )
        except LoginTimeout as err:
            if pool is not None:
                await db.store_login_outcome(pool, account, "timed_out", str(err))
            say(f"error: {err}; run the command again for a fresh code")
            return 1
        except (LoginUnreachable, ProfileBusy) as err:
            if pool is not None:
                await db.store_login_outcome(pool, account, "failed", type(err).__name__)
            hint = (
                "check the network (or WHATSAPP_WEB_URL)"
                if isinstance(err, LoginUnreachable)
                else "stop dispatch, then log in again"
            )
            print(f"error: {err}; {hint}", file=sys.stderr, flush=True)
            return 3 if isinstance(err, LoginUnreachable) else 5
        except Exception as err:
            if pool is not None:
                await db.store_login_outcome(pool, account, "failed", type(err).__name__)
            raise
        if pool is not None:
            await db.note_linked(pool, account)
            await db.store_login_outcome(pool, account, "linked", outcome.me)
        return 0
    finally:
        if pool is not None:
            with contextlib.suppress(Exception):
                await db.release_lease(pool, account, owner)
            await pool.close()


async def _login_through(
    pool: asyncpg.Pool,
    holder: str,
    account: str,
    phone: str | None,
    qr_path: Path,
    wait: float,
    say: Say,
) -> int:
    """Ask the replica that drives the account to link it, and show what it stores."""
    await db.request_login(pool, account, "code" if phone else "qr", phone, wait)
    say(f"account {account!r} is driven by {holder}; it links the account now")
    deadline = time.monotonic() + wait + 15
    shown: tuple[Any, Any] = (None, None)
    while time.monotonic() < deadline:
        state = await db.read_login(pool, account)
        if state is not None:
            if state["status"] == "linked":
                say(f"WhatsApp Web account {account!r} is linked ({state['detail'] or ''})")
                return 0
            if state["status"] in ("timed_out", "failed"):
                say(f"error: the login {state['status'].replace('_', ' ')}: {state['detail']}")
                return 1 if state["status"] == "timed_out" else 2
            now = (state["qr_text"], state["pairing_code"])
            if now != shown and any(now):
                shown = now
                if state["qr_png"]:
                    say(qr_terminal(state["qr_text"]))
                    say(f"QR code saved to {_save_png(qr_path, state['qr_png'])}: scan it")
                if state["pairing_code"]:
                    say(f"Pairing code for account {account!r}: {state['pairing_code']}")
        await asyncio.sleep(POLL_SECONDS)
    say(f"error: account {account!r} was not linked within {wait:g} s")
    return 1


async def run_status(settings: DispatchSettings, account: str | None, say: Say) -> int:
    pool = await create_pool(settings.database_url, 1, 2)
    try:
        rows = await db.list_accounts(pool)
    finally:
        await pool.close()
    rows = [r for r in rows if account is None or r.account == account]
    if not rows:
        say("no WhatsApp Web accounts seen yet")
        return 0 if account is None else 1
    warmup = settings.policy_whatsapp_web_warmup
    for r in rows:
        owner = f"driven by {r.owner}" if r.lease_live else "not driven by any replica"
        day = (r.now - r.linked_at).days + 1 if r.linked_at else None
        warm = (
            f"warm-up day {day} of {len(warmup)} (limit {warmup[day - 1]}/day)"
            if day is not None and warmup and day <= len(warmup)
            else "warmed up"
            if day is not None
            else "never seen linked"
        )
        say(f"{r.account}  {r.state}{f' ({r.state_reason})' if r.state_reason else ''}  {owner}")
        say(f"    {r.wid or 'no number yet'}; {warm}")
        if r.phone_active_at:
            idle = (r.now - r.phone_active_at).total_seconds() / 86400
            say(f"    phone last used {idle:.1f} days ago (WhatsApp logs out after 14)")
        if r.pause_in_force:
            until = (
                f"until {r.paused_until:%Y-%m-%d %H:%M %Z}" if r.paused_until else "until lifted"
            )
            say(f"    PAUSED ({r.pause_code}, {r.pause_scope}) {until}: {r.pause_reason}")
    return 0


async def run_resume(settings: DispatchSettings, account: str, say: Say) -> int:
    from shvya_common.contracts.events import EventType
    from shvya_common.events import record_event

    pool = await create_pool(settings.database_url, 1, 2)
    try:
        if not await db.lift_pause(pool, account):
            say(f"account {account!r} has no pause in force")
            return 1
        await record_event(
            pool,
            None,
            None,
            EventType.WHATSAPP_WEB_ACCOUNT_RESUMED,
            {"account": account, "by": "operator"},
        )
    finally:
        await pool.close()
    say(f"lifted the pause of WhatsApp Web account {account!r}; its sends go at their re-check")
    return 0


async def run_canary(
    settings: DispatchSettings, account: str, to: str, text: str | None, say: Say
) -> int:
    """Send one message from a real linked account and report each step; 0 when it was sent
    (acknowledged by WhatsApp's server)."""
    from shvya_common.contracts import SendParams
    from shvya_dispatch.channels.whatsapp_web import WhatsAppWebChannel

    started = time.monotonic()

    def step(ok: bool, what: str) -> None:
        say(f"[{time.monotonic() - started:6.1f}s] {'ok  ' if ok else 'FAIL'} {what}")

    check_account(account)
    digits = phone_digits(to)
    pool = await _pool(settings, say)
    owner = f"canary:{socket.gethostname()}:{os.getpid()}"
    try:
        if pool is not None and await db.acquire_lease(pool, account, owner, 600) is None:
            step(False, f"account {account!r} is driven by a running dispatch replica")
            return 2
        channel = WhatsAppWebChannel(settings)
        try:
            await channel.start()
        except RuntimeError as err:
            step(False, str(err))
            return 2
        step(True, f"Chromium and wa-js found ({settings.whatsapp_web_wa_js_path})")
        acks: list[Any] = []

        async def on_event(_s: WaSession, kind: str, data: Any) -> None:
            if kind == "ack":
                acks.append(data)

        channel.on_event = on_event
        try:
            session = channel.session(account)
            await session.open()
            status = await session.status()
            step(status.ready, f"WhatsApp Web loaded, wa-js {status.version} injected")
            status = await session.wait_until(
                lambda s: s.state()[0] not in ("starting", "syncing"),
                settings.whatsapp_web_load_timeout_seconds,
            )
            state, reason = status.state()
            step(state == "connected", f"account state {state}{f' ({reason})' if reason else ''}")
            if state != "connected":
                return 1
            found = await session.call("prepare", digits, timeout=60)
            step(bool(found and found.get("exists")), f"+{digits} is on WhatsApp")
            if not (found and found.get("exists")):
                return 1
            body = text or f"SHVYA canary {uuid.uuid4().hex[:8]}"
            params = SendParams(
                company_id=uuid.uuid4(),
                lead_id=uuid.uuid4(),
                channel="whatsapp_web",
                to=to,
                text=body,
                send_key=f"canary:{uuid.uuid4()}",
            )
            channel.settings = settings.model_copy(
                update={"whatsapp_web_company_accounts": {str(params.company_id): account}}
            )
            try:
                result = await channel.send(to, body, message_id=uuid.uuid4(), params=params)
            except Exception as err:
                step(False, f"send: {type(err).__name__}: {err}")
                return 1
            step(True, f"sent, acknowledged by WhatsApp's server: {result.provider_message_id}")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if any(
                    result.provider_message_id in (a.get("ids") or []) and a.get("ack", 0) >= 2
                    for a in acks
                    if isinstance(a, dict)
                ):
                    step(True, "delivered to the phone")
                    break
                await asyncio.sleep(POLL_SECONDS)
            else:
                step(False, "no delivery acknowledgement within 60 s (the phone may be off)")
            return 0
        finally:
            await channel.aclose()
    finally:
        if pool is not None:
            with contextlib.suppress(Exception):
                await db.release_lease(pool, account, owner)
            await pool.close()


def main_for(command: str, args: Any) -> int:
    """Run one of the commands above from parsed arguments."""
    say: Say = lambda line: print(line, flush=True)  # noqa: E731
    try:
        settings = DispatchSettings()
        account = getattr(args, "account", None) or settings.whatsapp_web_account
        if command == "whatsapp-web-login":
            return asyncio.run(
                run_login(
                    settings,
                    account,
                    phone=args.phone,
                    qr_path=args.qr_path,
                    timeout=args.timeout,
                    settle_seconds=args.settle_seconds,
                    say=say,
                    show_terminal=not args.no_terminal_qr,
                )
            )
        if command == "whatsapp-web-status":
            return asyncio.run(run_status(settings, args.account, say))
        if command == "whatsapp-web-resume":
            return asyncio.run(run_resume(settings, account, say))
        return asyncio.run(run_canary(settings, account, args.to, args.text, say))
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {first}", file=sys.stderr)
        return 2
