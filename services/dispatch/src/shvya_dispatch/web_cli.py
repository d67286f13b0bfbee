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
console; without a reachable database the login still works from the PNG file. With `--json`
the login prints one JSON object per line instead (`Output`), for a script or the console to
follow as it happens.

Exit codes are the `shvya` commands' (`shvya_common.ops.base.EXIT_CODES`), one meaning each: 0
done (linked), 1 ran and failed (not linked in time, the replica's login failed), 2 bad
arguments or settings, 3 a server could not be reached (PostgreSQL, WhatsApp Web), 5 the
account is in use by another process (its lease, or its browser profile), 6 the schema is older
than the code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from shvya_common.ops.base import (
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SCHEMA,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    START_HINT,
    OpsError,
    database,
)
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
# A step of the login for `--json`: its kind and its fields.
Event = Callable[[str, dict[str, Any]], None]
POLL_SECONDS = 0.5
# Failures that mean a server did not answer, not that a command went wrong.
UNREACHABLE_ERRORS = (
    ConnectionError,
    socket.gaierror,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
)


class Output:
    """Where a command's lines go: to a person (errors on stderr), or with `--json` one JSON
    object per line on stdout, each named by `event` (`database`, `replica`, `qr`,
    `pairing_code`, and last `outcome` with the exit code), with what is meant for a person
    moved to stderr so stdout stays parseable."""

    def __init__(self, as_json: bool = False) -> None:
        self.json = as_json

    def say(self, line: str) -> None:
        print(line, file=sys.stderr if self.json else sys.stdout, flush=True)

    def event(self, kind: str, fields: dict[str, Any]) -> None:
        if self.json:
            print(json.dumps({"event": kind, **fields}, default=str), flush=True)

    def fail(self, code: int, message: str, account: str | None = None) -> int:
        """Report a command that stopped on an error; its exit code."""
        print(f"error: {message}", file=sys.stderr, flush=True)
        self.event(
            "outcome",
            {
                "account": account,
                "status": STATUS_OF.get(code, "failed"),
                "exit_code": code,
                "error": message,
            },
        )
        return code


STATUS_OF = {
    EXIT_OK: "linked",
    EXIT_FAILED: "failed",
    EXIT_USAGE: "usage",
    EXIT_UNREACHABLE: "unreachable",
    EXIT_BUSY: "busy",
    EXIT_SCHEMA: "schema",
}


def _ignore(_kind: str, _fields: dict[str, Any]) -> None:
    return None


async def _pool(
    settings: DispatchSettings, say: Say, event: Event = _ignore
) -> asyncpg.Pool | None:
    try:
        return await asyncio.wait_for(create_pool(settings.dsn, 1, 2), 5)
    except Exception as err:
        say(f"note: no database ({type(err).__name__}); the QR is not stored for the console")
        event("database", {"available": False, "error": type(err).__name__})
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
    event: Event = _ignore,
) -> int:
    """0 linked, 1 not linked in time, 3 WhatsApp Web unreachable, 5 the account is in use by
    another process (its lease or its browser profile); the same numbers as the `shvya`
    commands'. `event` gets each step for `--json`, the `outcome` last."""
    check_account(account)
    if phone is not None:
        phone = phone_digits(phone)
    wait = timeout if timeout is not None else settings.whatsapp_web_login_timeout_seconds
    qr_path = qr_path or settings.whatsapp_web_profile_dir / f"{account}-qr.png"

    def done(code: int, **fields: Any) -> int:
        status = fields.pop("status", None) or STATUS_OF.get(code, "failed")
        event("outcome", {"account": account, "status": status, "exit_code": code, **fields})
        return code

    pool = await _pool(settings, say, event)
    owner = f"cli:{socket.gethostname()}:{os.getpid()}"
    try:
        if pool is not None:
            row = await db.read_account(pool, account)
            if row is not None and row.lease_live and row.owner and row.owner != owner:
                event("replica", {"account": account, "owner": row.owner})
                code, fields = await _login_through(
                    pool, row.owner, account, phone, qr_path, wait, say, event
                )
                return done(code, **fields)
            if await db.acquire_lease(pool, account, owner, wait + 120) is None:
                message = f"another process took account {account!r} just now; try again"
                print(f"error: {message}", file=sys.stderr, flush=True)
                return done(EXIT_BUSY, error=message)

        async def on_qr(text: str, png: bytes) -> None:
            if show_terminal:
                say(qr_terminal(text))
            event("qr", {"account": account, "qr_text": text, "png_path": str(qr_path.resolve())})
            if pool is not None:
                await db.store_qr(pool, account, text, png)

        async def on_code(code: str) -> None:
            say(
                f"Pairing code for account {account!r}: {code}  (on the phone: WhatsApp > "
                "Settings > Linked devices > Link a device > Link with phone number instead)"
            )
            event("pairing_code", {"account": account, "code": code})
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
            return done(EXIT_FAILED, status="timed_out", error=str(err))
        except (LoginUnreachable, ProfileBusy) as err:
            if pool is not None:
                await db.store_login_outcome(pool, account, "failed", type(err).__name__)
            hint = (
                "check the network (or WHATSAPP_WEB_URL)"
                if isinstance(err, LoginUnreachable)
                else "stop dispatch, then log in again"
            )
            print(f"error: {err}; {hint}", file=sys.stderr, flush=True)
            code = EXIT_UNREACHABLE if isinstance(err, LoginUnreachable) else EXIT_BUSY
            return done(code, error=f"{err}; {hint}")
        except Exception as err:
            if pool is not None:
                await db.store_login_outcome(pool, account, "failed", type(err).__name__)
            raise
        if pool is not None:
            await db.note_linked(pool, account)
            await db.store_login_outcome(pool, account, "linked", outcome.me)
        return done(EXIT_OK, me=outcome.me)
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
    event: Event = _ignore,
) -> tuple[int, dict[str, Any]]:
    """Ask the replica that drives the account to link it, and show what it stores; the exit
    code and the outcome's fields."""
    await db.request_login(pool, account, "code" if phone else "qr", phone, wait)
    say(f"account {account!r} is driven by {holder}; it links the account now")
    deadline = time.monotonic() + wait + 15
    shown: tuple[Any, Any] = (None, None)
    while time.monotonic() < deadline:
        state = await db.read_login(pool, account)
        if state is not None:
            if state["status"] == "linked":
                say(f"WhatsApp Web account {account!r} is linked ({state['detail'] or ''})")
                return EXIT_OK, {"me": state["detail"]}
            if state["status"] in ("timed_out", "failed"):
                message = f"the login {state['status'].replace('_', ' ')}: {state['detail']}"
                say(f"error: {message}")
                return EXIT_FAILED, {"status": state["status"], "error": message}
            now = (state["qr_text"], state["pairing_code"])
            if now != shown and any(now):
                shown = now
                if state["qr_png"]:
                    if not _quiet(event):
                        say(qr_terminal(state["qr_text"]))
                    saved = _save_png(qr_path, state["qr_png"])
                    say(f"QR code saved to {saved}: scan it")
                    event(
                        "qr", {"account": account, "qr_text": state["qr_text"], "png_path": saved}
                    )
                if state["pairing_code"]:
                    say(f"Pairing code for account {account!r}: {state['pairing_code']}")
                    event("pairing_code", {"account": account, "code": state["pairing_code"]})
        await asyncio.sleep(POLL_SECONDS)
    message = f"account {account!r} was not linked within {wait:g} s"
    say(f"error: {message}")
    return EXIT_FAILED, {"status": "timed_out", "error": message}


def _quiet(event: Event) -> bool:
    """True when the login reports to a script (`--json`): no QR drawn in the terminal."""
    return event is not _ignore


async def run_status(settings: DispatchSettings, account: str | None, say: Say) -> int:
    async with database(settings) as pool:  # PostgreSQL down: `Unreachable`, exit 3
        rows = await db.list_accounts(pool)
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

    async with database(settings) as pool:
        if not await db.lift_pause(pool, account):
            say(f"account {account!r} has no pause in force")
            return EXIT_FAILED
        await record_event(
            pool,
            None,
            None,
            EventType.WHATSAPP_WEB_ACCOUNT_RESUMED,
            {"account": account, "by": "operator"},
        )
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
            return EXIT_BUSY
        channel = WhatsAppWebChannel(settings)
        try:
            await channel.start()
        except RuntimeError as err:
            step(False, str(err))
            return EXIT_USAGE
        step(True, f"Chromium and wa-js found ({settings.whatsapp_web_wa_js_path})")
        acks: list[Any] = []

        async def on_event(_s: WaSession, kind: str, data: Any) -> None:
            if kind == "ack":
                acks.append(data)

        channel.on_event = on_event
        try:
            session = channel.session(account)
            try:
                await session.open()
            except (LoginUnreachable, ProfileBusy) as err:
                step(False, str(err))
                return EXIT_UNREACHABLE if isinstance(err, LoginUnreachable) else EXIT_BUSY
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
    """Run one of the commands above from parsed arguments; the exit code."""
    out = Output(bool(getattr(args, "json", False)) and command == "whatsapp-web-login")
    account: str | None = getattr(args, "account", None)
    try:
        settings = DispatchSettings()
        account = account or settings.whatsapp_web_account
        if command == "whatsapp-web-login":
            return asyncio.run(
                run_login(
                    settings,
                    account,
                    phone=args.phone,
                    qr_path=args.qr_path,
                    timeout=args.timeout,
                    settle_seconds=args.settle_seconds,
                    say=out.say,
                    show_terminal=not (args.no_terminal_qr or out.json),
                    event=out.event if out.json else _ignore,
                )
            )
        if command == "whatsapp-web-status":
            return asyncio.run(run_status(settings, args.account, out.say))
        if command == "whatsapp-web-resume":
            return asyncio.run(run_resume(settings, account, out.say))
        return asyncio.run(run_canary(settings, account, args.to, args.text, out.say))
    except OpsError as err:  # PostgreSQL unreachable, named with how to start it
        return out.fail(err.code, str(err), account)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as err:
        message = f"the database schema is older than this version ({err}): run `make migrate`"
        return out.fail(EXIT_SCHEMA, message, account)
    except UNREACHABLE_ERRORS as err:
        hint = START_HINT.format(setting="DATABASE_URL")
        return out.fail(
            EXIT_UNREACHABLE, f"cannot reach PostgreSQL ({_first(err)}): {hint}", account
        )
    except (ValueError, RuntimeError) as err:
        return out.fail(EXIT_USAGE, str(err), account)
    except Exception as err:
        return out.fail(EXIT_FAILED, _first(err), account)


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
