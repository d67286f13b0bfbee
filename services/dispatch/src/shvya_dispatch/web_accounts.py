"""The WhatsApp Web account supervisor: which accounts this dispatch replica drives, their
health, and everything they receive.

Every WHATSAPP_WEB_SUPERVISE_SECONDS it lists the accounts (WHATSAPP_WEB_ACCOUNT, the accounts
WHATSAPP_WEB_COMPANY_ACCOUNTS names, every company's `whatsapp_web` channel account) and, for
each, takes or renews its **lease** (`whatsapp_web_accounts`): one replica drives an account's
browser at a time; when its holder stops renewing (killed, partitioned), another takes it over
once the lease lapses, and a replica that lost its lease closes that browser at once. With
WHATSAPP_WEB_LISTEN (the default) every leased account's browser stays open, so what it
receives arrives as it happens:

    a message (text, caption, reply), a reaction, an edit, a deletion, a delivery or read
    acknowledgement  → a `whatsapp_web.inbound` job (the bus's outbox, de-duplicated by
                       WhatsApp's id), which ingest files like every other inbound message
    a message typed on the phone → the phone is in use (the 14-day inactivity clock restarts)
    connection events             → a health probe now

On opening, an account catches up on what arrived while no browser was open (chats with unread
messages or newer than the last filed one). A job that cannot be written (database away) is
kept and written on the next pass.

The **health probe** (every WHATSAPP_WEB_PROBE_SECONDS and on connection events) asks wa-js for
the connection state: connected, syncing, logged out (with WhatsApp's reason), offline,
conflict (open elsewhere), restricted (reach-out timelock), banned. Each change is recorded,
written as a `whatsapp_web.account_state` event and counted in
`shvya_whatsapp_web_state_changes_total`; a logout or ban pauses the account, a timelock pauses
its new contacts, and a pause whose cause is gone (linked again, timelock over) is lifted. A
phone unused for WHATSAPP_WEB_INACTIVITY_REMINDER_DAYS gets one
`whatsapp_web.inactivity_reminder` before WhatsApp's 14-day logout.

A **login** asked for through the database (the CLI's `whatsapp-web-login` while dispatch holds
the account, or the API) is served here, in the browser that already holds the profile: each
QR code (text and PNG) or the pairing code is stored in `whatsapp_web_logins`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from shvya_common.bus import JobBus
from shvya_common.channel_accounts import web_profile
from shvya_common.contracts import SendParams, WhatsAppWebInboundParams
from shvya_common.contracts.events import EventType
from shvya_common.db import is_outage
from shvya_common.errors import DeferJob
from shvya_common.events import record_event
from shvya_common.metrics import (
    WHATSAPP_WEB_ACCOUNT_STATE,
    WHATSAPP_WEB_INBOUND,
    WHATSAPP_WEB_PHONE_IDLE_DAYS,
    WHATSAPP_WEB_STATE_CHANGES,
)
from shvya_common.whatsapp import web_accounts as db
from shvya_dispatch.channels.errors import AccountPausedError
from shvya_dispatch.channels.whatsapp_web import (
    LoginHooks,
    LoginTimeout,
    WaSession,
    WhatsAppWebChannel,
    link,
)
from shvya_dispatch.settings import DispatchSettings

log = structlog.get_logger(__name__)

INBOUND_KINDS = frozenset({"message", "reaction", "ack", "edit", "revoke"})
PROBE_EVENTS = frozenset(
    {"logout", "require_auth", "authenticated", "main_ready", "online", "stream_mode", "reloaded"}
)
# The pause codes a probe lifts when their cause is gone.
LINK_CODES = ["logged_out", "banned"]
PENDING_MAX = 10_000
CATCHUP_SLACK_SECONDS = 300
LOGOUT_DAYS = 14


def inbound_key(account: str, kind: str, item: dict[str, Any]) -> str:
    """The job's idempotency key: WhatsApp's own id of what happened, so a message seen twice
    (the live event and the catch-up) is one job."""
    if kind == "ack":
        ids = ",".join(sorted(str(i) for i in item.get("ids") or []))
        what = f"{item.get('ack')}:{hashlib.sha256(ids.encode()).hexdigest()[:24]}"
    elif kind == "edit":
        # Each edit has its own key; the message's id alone would make a second edit of it
        # look like the first.
        what = f"{item.get('id')}:{item.get('editId') or item.get('t')}"
    else:
        what = str(item.get("id"))
    return f"whatsapp_web.inbound:{account}:{kind}:{what}"[:500]


class WebAccounts:
    """This replica's WhatsApp Web accounts: leases, sessions, probes, inbound, logins."""

    def __init__(
        self,
        settings: DispatchSettings,
        pool: asyncpg.Pool,
        bus: JobBus | None,
        channel: WhatsAppWebChannel,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.bus = bus
        self.channel = channel
        self.clock = clock
        self.owner = settings.whatsapp_web_replica_id or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        )
        self.held: dict[str, float] = {}
        self.epochs: dict[str, int] = {}
        self.probed: dict[str, float] = {}
        self.pending: deque[tuple[str, str, dict[str, Any]]] = deque(maxlen=PENDING_MAX)
        self.logins: dict[str, asyncio.Task[None]] = {}
        self.sent_ids: deque[str] = deque(maxlen=5_000)
        self._companies: dict[str, tuple[float, uuid.UUID | None]] = {}
        self._probe_now: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        channel.gate = self.may_drive
        channel.on_event = self.on_event
        channel.refusals = self.refusal
        channel.sent_hook = self.sent_ids.append
        channel.recheck = self.recheck
        channel.on_pause = self.pause

    # --- which accounts, and which are ours ---------------------------------------------

    async def accounts(self) -> list[str]:
        names = {self.settings.whatsapp_web_account}
        names.update(self.settings.whatsapp_web_company_accounts.values())
        rows = await self.pool.fetch(
            "SELECT id FROM channel_accounts WHERE channel = 'whatsapp_web' ORDER BY created_at"
        )
        names.update(web_profile(r["id"]) for r in rows)
        return sorted(names)

    def _lease_margin(self) -> float:
        return min(10.0, self.settings.whatsapp_web_lease_seconds / 4)

    async def may_drive(self, account: str) -> bool:
        """True when this replica holds (or just took) the account's lease."""
        if self.held.get(account, 0.0) - self._lease_margin() > self.clock():
            return True
        return await self._acquire(account)

    async def _acquire(self, account: str) -> bool:
        ttl = self.settings.whatsapp_web_lease_seconds
        epoch = await db.acquire_lease(self.pool, account, self.owner, ttl)
        if epoch is None:
            await self._lost(account)
            return False
        previous = self.epochs.get(account)
        self.held[account] = self.clock() + ttl
        self.epochs[account] = epoch
        if previous is None:
            log.info("whatsapp_web_account_claimed", account=account, owner=self.owner)
            self._probe_now.add(account)
        return True

    async def _lost(self, account: str) -> None:
        if self.held.pop(account, None) is not None:
            log.warning("whatsapp_web_account_lost", account=account, owner=self.owner)
            self.epochs.pop(account, None)
            await self.channel.close_session(account)

    async def release_all(self) -> None:
        for task in self.logins.values():
            task.cancel()
        for account in list(self.held):
            await self.channel.close_session(account)
            with contextlib.suppress(Exception):
                await db.release_lease(self.pool, account, self.owner)
        self.held.clear()

    # --- the loop --------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                try:
                    await self.tick()
                except Exception as err:  # an outage or a bug must not stop the supervisor
                    log.warning(
                        "whatsapp_web_supervise_failed", error=f"{type(err).__name__}: {err}"[:300]
                    )
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        _first(stopping.wait(), self._wake.wait()),
                        self.settings.whatsapp_web_supervise_seconds,
                    )
        finally:
            await self.release_all()

    def wake(self) -> None:
        self._wake.set()

    async def tick(self) -> None:
        await self._flush_pending()
        for account in await self.accounts():
            listen = self.settings.whatsapp_web_listen
            if not listen and account not in self.held:
                continue
            if not await self._acquire(account):
                continue
            session = self.channel.session(account)
            if listen and not session.alive:
                async with session.lock.hold(50):
                    await session.open()
                self._probe_now.add(account)
                self._spawn(self._catch_up(session))
            due = self.probed.get(account, 0.0) + self.settings.whatsapp_web_probe_seconds
            if session.alive and (account in self._probe_now or self.clock() >= due):
                self._probe_now.discard(account)
                await self.probe(session)
            await self._serve_login(account, session)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- events from the pages -------------------------------------------------------------

    async def on_event(self, session: WaSession, kind: str, data: Any) -> None:
        account = session.account
        if kind in INBOUND_KINDS:
            item = data if isinstance(data, dict) else {"value": data}
            await self.forward(account, kind, item)
        elif kind == "own_message":
            await self._own_message(account, data)
        elif kind in PROBE_EVENTS:
            self._probe_now.add(account)
            self.wake()
        elif kind not in ("auth_code", "qr_idle"):
            # A kind this code does not know yet: kept for ingest to record, never an error.
            await self.forward(account, kind, data if isinstance(data, dict) else {"value": data})

    async def _own_message(self, account: str, data: Any) -> None:
        if not isinstance(data, dict) or data.get("id") in self.sent_ids:
            return
        t = data.get("t")
        at = datetime.fromtimestamp(t, UTC) if isinstance(t, int | float) else datetime.now(UTC)
        await db.note_phone_activity(self.pool, account, at)

    async def company_of(self, account: str) -> uuid.UUID | None:
        """The one company whose inbound this account files: its channel account's, the one
        company mapped to it, or the default company for the platform's account."""
        cached = self._companies.get(account)
        if cached is not None and cached[0] > self.clock():
            return cached[1]
        company: uuid.UUID | None = None
        if account.startswith("ca-"):
            with contextlib.suppress(ValueError):
                company = await self.pool.fetchval(
                    "SELECT company_id FROM channel_accounts WHERE id = $1"
                    " AND channel = 'whatsapp_web'",
                    uuid.UUID(account[3:]),
                )
        else:
            mapped = [
                c for c, a in self.settings.whatsapp_web_company_accounts.items() if a == account
            ]
            if len(mapped) == 1:
                with contextlib.suppress(ValueError):
                    company = uuid.UUID(mapped[0])
            elif not mapped and account == self.settings.whatsapp_web_account:
                company = await self.pool.fetchval("SELECT id FROM companies WHERE is_default")
        if company is not None:  # an account not routed yet is asked again next time
            self._companies[account] = (self.clock() + 30.0, company)
        return company

    async def forward(self, account: str, kind: str, item: dict[str, Any]) -> bool:
        """Write the item as a `whatsapp_web.inbound` job; kept for the next pass when the
        database is away."""
        company = await self.company_of(account)
        if company is None and account == self.settings.whatsapp_web_account:
            # The platform's account files into the default company, which ingest creates at
            # its start: keep the item until it exists.
            self.pending.append((account, kind, item))
            return False
        if company is None:
            WHATSAPP_WEB_INBOUND.labels(kind, "skipped").inc()
            log.warning("whatsapp_web_inbound_unrouted", account=account, kind=kind)
            return False
        if self.bus is None:
            return False
        params = WhatsAppWebInboundParams(account=account, company_id=company, kind=kind, item=item)
        try:
            async with self.bus.unit(acquire_timeout=5) as unit:
                await unit.enqueue_job(
                    "whatsapp_web.inbound",
                    params,
                    inbound_key(account, kind, item),
                    company_id=company,
                )
        except (OSError, TimeoutError, asyncpg.PostgresError) as err:
            if isinstance(err, asyncpg.PostgresError) and not is_outage(err):
                WHATSAPP_WEB_INBOUND.labels(kind, "failed").inc()
                log.warning("whatsapp_web_inbound_failed", kind=kind, error=type(err).__name__)
                return False
            self.pending.append((account, kind, item))
            WHATSAPP_WEB_INBOUND.labels(kind, "pending").inc()
            return False
        WHATSAPP_WEB_INBOUND.labels(kind, "queued").inc()
        if kind == "message" and isinstance(item.get("t"), int):
            await db.advance_watermark(self.pool, account, item["t"])
        return True

    async def _flush_pending(self) -> None:
        for _ in range(len(self.pending)):
            account, kind, item = self.pending.popleft()
            if not await self.forward(account, kind, item):
                break

    async def _catch_up(self, session: WaSession) -> None:
        """What arrived while no browser was open: recent messages of chats that are unread
        or newer than the last one filed, and never older than the account's link: a phone
        linked today has years of chats, none of them new to us (each would be filed as an
        inbound message and answered)."""
        try:
            ready = await session.wait_until(
                lambda s: s.state()[0] == "connected",
                self.settings.whatsapp_web_load_timeout_seconds,
            )
            if ready.state()[0] != "connected":
                return
            row = await db.read_account(self.pool, session.account)
            linked = (row.linked_at or row.now) if row is not None else datetime.now(UTC)
            watermark = row.inbound_watermark if row is not None else 0
            floor = int(linked.timestamp()) - CATCHUP_SLACK_SECONDS
            since = max(watermark - CATCHUP_SLACK_SECONDS, floor)
            items = await session.call(
                "recent", since, self.settings.whatsapp_web_catchup_per_chat, floor, timeout=120
            )
        except Exception as err:  # catching up is best effort; live events still arrive
            log.warning(
                "whatsapp_web_catchup_failed", account=session.account, error=type(err).__name__
            )
            return
        for item in items or []:
            if isinstance(item, dict):
                await self.forward(session.account, "message", item)
        log.info("whatsapp_web_caught_up", account=session.account, messages=len(items or []))

    # --- refusals, pauses --------------------------------------------------------------------

    async def recheck(self, account: str, params: SendParams) -> None:
        """Under the account's lock, just before the page: defer a send whose account was
        paused while it waited (its gate ran before the pause)."""
        row = await db.read_account(self.pool, account)
        if row is None or not row.pause_in_force:
            return
        if row.pause_scope == "new_contacts" and await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE company_id = $1 AND lead_id = $2"
            " AND channel = 'whatsapp_web' AND (direction = 'inbound'"
            " OR status IN ('sent', 'unknown')))",
            params.company_id,
            params.lead_id,
        ):
            return
        recheck = row.now + timedelta(seconds=self.settings.policy_pause_recheck_seconds)
        until = recheck if row.paused_until is None else min(recheck, row.paused_until)
        raise DeferJob(
            until, f"whatsapp web account {account} paused ({row.pause_code}): {row.pause_reason}"
        )

    async def refusal(self, account: str, refused: bool) -> int:
        if not refused:
            await db.clear_refusals(self.pool, account)
            return 0
        return await db.note_refusal(self.pool, account)

    async def pause(self, err: AccountPausedError) -> bool:
        """Pause the account for a send WhatsApp refused; True (and one event) when new."""
        return await self._pause(err, widen=True)

    async def _pause(self, err: AccountPausedError, *, widen: bool) -> bool:
        """Pause the account for `err`. A send refused under a timelock that already paused
        new contacts (`widen`) pauses everything: a warm chat was refused too."""
        until = (
            datetime.now(UTC) + timedelta(seconds=err.pause_seconds)
            if err.pause_seconds is not None
            else None
        )
        scope = err.scope
        if scope == "new_contacts" and widen:
            row = await db.read_account(self.pool, err.account)
            if row is not None and row.pause_in_force and row.pause_scope == "new_contacts":
                # Refused again although only warm chats could get through: nothing goes.
                scope = "all"
        created = await db.start_pause(self.pool, err.account, err.kind, err.reason, until, scope)
        if created:
            company = await self.company_of(err.account)
            await record_event(
                self.pool,
                company,
                None,
                EventType.WHATSAPP_WEB_ACCOUNT_PAUSED,
                {
                    "account": err.account,
                    "code": err.kind,
                    "error_code": err.code,
                    "reason": err.reason,
                    "scope": err.scope,
                    "until": until.isoformat() if until else None,
                },
            )
            log.warning("whatsapp_web_account_paused", account=err.account, code=err.kind)
        return created

    async def _lift(self, account: str, codes: list[str], why: str) -> None:
        if await db.lift_pause(self.pool, account, codes):
            await record_event(
                self.pool,
                await self.company_of(account),
                None,
                EventType.WHATSAPP_WEB_ACCOUNT_RESUMED,
                {"account": account, "by": why},
            )
            log.info("whatsapp_web_account_resumed", account=account, by=why)

    # --- the health probe --------------------------------------------------------------------

    async def probe(self, session: WaSession) -> str:
        account = session.account
        self.probed[account] = self.clock()
        status = await session.status()
        state, reason = status.state()
        if state == "logged_out":
            reason = reason or session.logout_reason
        old, changed = await db.set_state(self.pool, account, state, reason, wid=status.me)  # type: ignore[arg-type]
        for name in db.STATES:
            WHATSAPP_WEB_ACCOUNT_STATE.labels(account, name).set(1 if name == state else 0)
        if changed:
            WHATSAPP_WEB_STATE_CHANGES.labels(state).inc()
            await record_event(
                self.pool,
                await self.company_of(account),
                None,
                EventType.WHATSAPP_WEB_ACCOUNT_STATE,
                {
                    "account": account,
                    "state": state,
                    "previous": old,
                    "reason": reason,
                    "wid": status.me,
                },
            )
            log.info(
                "whatsapp_web_account_state",
                account=account,
                state=state,
                previous=old,
                reason=reason,
            )
        if state == "logged_out":
            await self._pause(
                AccountPausedError(
                    account,
                    "logged_out",
                    0,
                    f"logged out ({reason or 'no reason given'})",
                    pause_seconds=None,
                ),
                widen=False,
            )
        elif state == "banned":
            await self._pause(
                AccountPausedError(account, "banned", 0, reason or "banned", pause_seconds=None),
                widen=False,
            )
        elif state == "restricted":
            await self._pause(
                AccountPausedError(
                    account,
                    "timelock",
                    463,
                    reason or "reach-out timelock",
                    pause_seconds=self.settings.whatsapp_web_timelock_pause_seconds,
                    scope="new_contacts",
                ),
                widen=False,
            )
        elif state == "connected":
            await self._lift(account, LINK_CODES, "linked")
            if status.timelocked is False:
                await self._lift(account, ["timelock"], "timelock over")
            await self._remind(account)
        return state

    async def _remind(self, account: str) -> None:
        row = await db.read_account(self.pool, account)
        if row is None or row.phone_active_at is None:
            return
        idle = (row.now - row.phone_active_at).total_seconds() / 86400
        WHATSAPP_WEB_PHONE_IDLE_DAYS.labels(account).set(round(idle, 2))
        if idle < self.settings.whatsapp_web_inactivity_reminder_days:
            return
        if await db.mark_reminded(self.pool, account):
            logout_at = row.phone_active_at + timedelta(days=LOGOUT_DAYS)
            await record_event(
                self.pool,
                await self.company_of(account),
                None,
                EventType.WHATSAPP_WEB_INACTIVITY_REMINDER,
                {
                    "account": account,
                    "phone_last_active_at": row.phone_active_at.isoformat(),
                    "logout_expected_at": logout_at.isoformat(),
                    "what_to_do": "open WhatsApp on the phone (or send a message from it)",
                },
            )
            log.warning("whatsapp_web_phone_inactive", account=account, idle_days=round(idle, 1))

    # --- logins asked for through the database -----------------------------------------------

    async def _serve_login(self, account: str, session: WaSession) -> None:
        task = self.logins.get(account)
        if task is not None and not task.done():
            return
        row = await db.read_account(self.pool, account)
        if row is None or not row.login_requested:
            return
        self.logins[account] = asyncio.ensure_future(self._login(session, row))

    async def _login(self, session: WaSession, row: db.WebAccount) -> None:
        account = session.account

        async def on_qr(text: str, png: bytes) -> None:
            await db.store_qr(self.pool, account, text, png)

        async def on_code(code: str) -> None:
            await db.store_pairing_code(self.pool, account, code)

        phone = row.login_phone if row.login_method == "code" else None
        left = max(5.0, (self.settings.whatsapp_web_login_timeout_seconds))
        try:
            outcome = await link(
                session,
                phone=phone,
                timeout=left,
                hooks=LoginHooks(on_qr=on_qr, on_code=on_code, say=lambda _line: None),
            )
        except LoginTimeout as err:
            await db.store_login_outcome(self.pool, account, "timed_out", str(err))
        except Exception as err:
            await db.store_login_outcome(self.pool, account, "failed", type(err).__name__)
        else:
            await db.note_linked(self.pool, account)
            await db.store_login_outcome(self.pool, account, "linked", outcome.me)
            self._probe_now.add(account)
            self.wake()
        finally:
            await db.end_login_request(self.pool, account)


async def _first(*aws: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
