"""The WhatsApp Web channel: sends (and, with the account supervisor, receives) as a linked
WhatsApp Web session in Debian's Chromium, driven by Playwright through WhatsApp Web's own
modules as the pinned `@wppconnect/wa-js` exposes them, not through DOM selectors.

Each account has its own persistent browser profile (WHATSAPP_WEB_PROFILE_DIR/<account>), so a
session survives restarts. A `WaSession` opens the profile, injects wa-js
(WHATSAPP_WEB_WA_JS_PATH) and the bridge (`wa_bridge`), and turns wa-js's events into Python
callbacks. A lock per account lets one send at a time drive it, serving waiting sends by their
job's priority. A send looks the number up (`WPP.contact.queryWidExists`), takes the message id
it will carry (`WPP.chat.generateMessageID`), shows "typing…" for a time proportional to the
text and sends with `WPP.chat.sendTextMessage(..., {waitForAck: true})`. Pacing, caps and quiet
hours belong to the policy engine.

Outcomes:

    the server acknowledged it (ack >= 1)            → sent, with WhatsApp's id
    nothing left (browser or page trouble before the send; the page says the message does not
    exist)                                           → RetryableError
    number not on WhatsApp                           → UndeliverableError (lead flagged)
    session logged out / banned                      → WhatsAppWebLoggedOut / AccountPausedError
    refused under the reach-out timelock (463)       → AccountPausedError, scope new_contacts
    refused N times in a row without a code          → AccountPausedError (restricted)
    refused once                                     → WhatsAppWebRefused (dead-lettered)
    no acknowledgement in time, or the page died mid-send → SendOutcomeUnknown: recorded
                                                      'unknown' with the id it would carry,
                                                      never retried

The one thing still read from the DOM is WhatsApp's "Use here" button, when the session was
opened in another browser (`whatsapp_web_selectors`); wa-js has no call for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import segno
import structlog
from playwright.async_api import BrowserContext, Page, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError

from shvya_common.bus.worker import CURRENT_JOB
from shvya_common.contracts import SendParams
from shvya_common.errors import PermanentError, RetryableError
from shvya_common.locks import PriorityLock
from shvya_dispatch.channels import whatsapp_web_selectors as sel
from shvya_dispatch.channels.base import SendResult
from shvya_dispatch.channels.errors import (
    AccountPausedError,
    SendOutcomeUnknown,
    UndeliverableError,
)
from shvya_dispatch.channels.wa_bridge import BRIDGE_JS, WPP_CONFIG_JS
from shvya_dispatch.settings import ACCOUNT_PATTERN, DispatchSettings

log = structlog.get_logger(__name__)

# What works for Debian's Chromium on these machines. Playwright itself adds --headless (when
# WHATSAPP_WEB_HEADLESS) and --no-sandbox (chromium_sandbox=False); without the background
# networking switches Chromium keeps dialling Google's hosts, which a closed network refuses.
CHROMIUM_ARGS = (
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1280, "height": 900}
POLL_SECONDS = 0.2
# wa-js's ack values (WPP.whatsapp.enums.ACK): FAILED -1, CLOCK 0 (waiting), SENT 1 (server),
# RECEIVED 2 (delivered), READ 3, PLAYED 4.
ACK_FAILED, ACK_CLOCK, ACK_SENT = -1, 0, 1
TIMELOCK_CODE = 463
# Stream modes (WPP.whatsapp.enums.StreamMode) that are a ban, not a connection problem.
BANNED_MODES = frozenset({"TOS_BLOCK", "SMB_TOS_BLOCK"})
# Closing the channel waits for the send in hand, ahead of any queued one.
PRIORITY_SHUTDOWN = 1_000

EventHandler = Callable[["WaSession", str, Any], Awaitable[None]]


class WhatsAppWebLoggedOut(AccountPausedError):
    """The account's session is logged out (QR shown); a person must link it again. Its sends
    wait (the account is paused) instead of failing."""

    def __init__(self, account: str, reason: str | None = None) -> None:
        why = f" ({reason})" if reason else ""
        super().__init__(
            account,
            "logged_out",
            0,
            f"WhatsApp Web session logged out for account {account!r}{why}; run "
            f"`.venv/bin/shvya whatsapp-web login --account {account}`",
            pause_seconds=None,
        )
        self.logout_reason = reason


class WhatsAppWebRefused(PermanentError):
    """WhatsApp refused this one message (failed acknowledgement) without a known reason."""


class AccountElsewhere(RetryableError):
    """Another replica drives this account's browser; nothing was sent here."""


def phone_digits(to: str) -> str:
    """An international number as WhatsApp wants it: digits only, country code first."""
    digits = re.sub(r"\D", "", to)
    if not 7 <= len(digits) <= 15:
        raise PermanentError(f"not an international phone number: {to!r}")
    return digits


def check_account(account: str) -> str:
    if not re.fullmatch(ACCOUNT_PATTERN, account):
        raise ValueError(f"account name {account!r} must match {ACCOUNT_PATTERN}")
    return account


def typing_seconds(text: str, rng: random.Random, settings: DispatchSettings) -> float:
    """How long "typing…" shows before a send: a human pace per character, drawn within
    WHATSAPP_WEB_TYPING_DELAY_MIN_MS–MAX_MS for each, capped at WHATSAPP_WEB_TYPING_MAX_SECONDS."""
    low = settings.whatsapp_web_typing_delay_min_ms
    high = settings.whatsapp_web_typing_delay_max_ms
    total_ms = sum(rng.uniform(low, high) for _ in text)
    return min(total_ms / 1000, settings.whatsapp_web_typing_max_seconds)


def qr_png(code: str, scale: int = 8) -> bytes:
    """The login QR as a PNG (with the quiet zone phones need), drawn from wa-js's auth code."""
    import io

    out = io.BytesIO()
    segno.make(code, error="l", micro=False).save(out, kind="png", scale=scale, border=4)
    return out.getvalue()


def qr_terminal(code: str) -> str:
    """The login QR drawn with block characters, for a terminal."""
    import io

    out = io.StringIO()
    segno.make(code, error="l", micro=False).terminal(out=out, compact=True, border=2)
    return out.getvalue()


async def chromium_user_agent(executable: Path) -> str | None:
    """A desktop Chrome user agent carrying the installed Chromium's version."""
    try:
        proc = await asyncio.create_subprocess_exec(
            str(executable),
            "--version",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    except (OSError, TimeoutError):
        return None
    version = re.search(r"(\d+\.\d+\.\d+\.\d+)", out.decode(errors="replace"))
    return sel.USER_AGENT_TEMPLATE.format(version=version.group(1)) if version else None


def check_wa_js(path: Path) -> None:
    if not path.is_file():
        raise RuntimeError(
            f"wa-js not found at {path}: run `make install` (it installs the pinned "
            "@wppconnect/wa-js from deploy/wa-js/) or set WHATSAPP_WEB_WA_JS_PATH"
        )


class WhatsAppWebBrowser:
    """Owns Playwright and opens an account's persistent profile in Debian's Chromium."""

    def __init__(self, settings: DispatchSettings) -> None:
        self.settings = settings
        self._pw: Playwright | None = None
        self.user_agent: str | None = None

    async def start(self) -> None:
        path = self.settings.whatsapp_web_chromium_path
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise RuntimeError(
                f"Chromium not found at {path}: install Debian's chromium "
                "(`bash deploy/ensure-chromium.sh`) or set WHATSAPP_WEB_CHROMIUM_PATH"
            )
        check_wa_js(self.settings.whatsapp_web_wa_js_path)
        self.user_agent = self.settings.whatsapp_web_user_agent or await chromium_user_agent(path)
        self._pw = await async_playwright().start()

    @property
    def running(self) -> bool:
        return self._pw is not None

    async def stop(self) -> None:
        if self._pw is not None:
            await self._pw.stop()
            self._pw = None

    async def __aenter__(self) -> WhatsAppWebBrowser:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def profile_dir(self, account: str) -> Path:
        return self.settings.whatsapp_web_profile_dir / check_account(account)

    async def open(self, account: str) -> BrowserContext:
        if self._pw is None:
            raise RuntimeError("WhatsAppWebBrowser.start() was not called")
        profile = self.profile_dir(account)
        profile.mkdir(parents=True, exist_ok=True)
        return await self._pw.chromium.launch_persistent_context(
            profile,
            executable_path=self.settings.whatsapp_web_chromium_path,
            headless=self.settings.whatsapp_web_headless,
            chromium_sandbox=False,
            args=list(CHROMIUM_ARGS),
            locale=sel.BROWSER_LOCALE,
            user_agent=self.user_agent,
            viewport=VIEWPORT,  # type: ignore[arg-type]
            # WhatsApp Web's Content-Security-Policy forbids inline scripts; wa-js is one.
            bypass_csp=True,
            # The service's own SIGTERM handling closes the browser through its exit stack.
            handle_sigint=False,
            handle_sigterm=False,
            handle_sighup=False,
        )


@dataclass
class Status:
    """What the page's wa-js says about the connection (`__shvya.status()`)."""

    ready: bool = False
    authenticated: bool = False
    main_ready: bool = False
    online: bool = False
    mode: str | None = None
    info: str | None = None
    me: str | None = None
    logout_reason: str | None = None
    timelocked: bool | None = None
    version: str | None = None

    @classmethod
    def of(cls, raw: Any) -> Status:
        if not isinstance(raw, dict):
            return cls()
        return cls(
            ready=bool(raw.get("ready")),
            authenticated=bool(raw.get("authenticated")),
            main_ready=bool(raw.get("mainReady")),
            online=bool(raw.get("online")),
            mode=raw.get("mode"),
            info=raw.get("info"),
            me=raw.get("me"),
            logout_reason=raw.get("logoutReason"),
            timelocked=raw.get("timelocked"),
            version=raw.get("version"),
        )

    def state(self) -> tuple[str, str | None]:
        """The account state this status means (`web_accounts.STATES`) and its reason."""
        if self.mode in BANNED_MODES:
            return "banned", f"WhatsApp blocked the account ({self.mode})"
        if self.logout_reason == "account_locked":
            return "banned", "WhatsApp locked the account (account_locked)"
        if not self.ready:
            return "starting", "WhatsApp Web is loading"
        if self.mode == "CONFLICT":
            return "conflict", "WhatsApp Web is open in another browser"
        if self.mode == "QR" or not self.authenticated:
            return "logged_out", self.logout_reason
        if self.timelocked:
            return "restricted", "WhatsApp's reach-out timelock (463): no new chats for now"
        if not self.online or self.mode == "OFFLINE" or self.info == "OFFLINE":
            return "offline", "not connected to WhatsApp (network, or the phone offline)"
        if not self.main_ready or self.mode == "SYNCING":
            return "syncing", "WhatsApp Web is syncing"
        return "connected", None


class LoginUnreachable(RetryableError):
    """WhatsApp Web's page did not load (no network, DNS, a refused connection, a timeout)."""


class ProfileBusy(RetryableError):
    """The account's browser profile did not open: another process (dispatch) holds it."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class WaSession:
    """One account's open browser: wa-js injected, its events forwarded to `on_event`."""

    def __init__(
        self,
        browser: WhatsAppWebBrowser,
        account: str,
        on_event: EventHandler | None = None,
    ) -> None:
        self.browser = browser
        self.settings = browser.settings
        self.account = account
        self.on_event = on_event
        # One send at a time per account; a waiting reply goes before a waiting campaign step.
        self.lock = PriorityLock()
        self.context: BrowserContext | None = None
        self.page: Page | None = None
        self.auth_code: str | None = None
        self.auth_code_seq = 0
        self.qr_idle = False
        self.logout_reason: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inject_lock = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self.page is not None and not self.page.is_closed()

    async def open(self) -> None:
        """Open the profile, load WhatsApp Web and inject wa-js and the bridge."""
        if self.alive:
            return
        await self.close()
        try:
            try:
                self.context = await self.browser.open(self.account)
            except PlaywrightError as err:
                raise ProfileBusy(
                    f"could not open the browser profile of account {self.account!r}: "
                    f"{_first_line(err)} (is the dispatch service using this profile right now?)"
                ) from err
            await self.context.add_init_script(script=WPP_CONFIG_JS)
            await self.context.expose_binding("__shvyaEmit", self._binding)
            self.page = (
                self.context.pages[0] if self.context.pages else await self.context.new_page()
            )
            self.page.on("load", lambda _page: self._spawn(self._reinject()))
            home = sel.home_url(self.settings.whatsapp_web_url)
            try:
                await self.page.goto(
                    home,
                    wait_until="domcontentloaded",
                    timeout=self.settings.whatsapp_web_load_timeout_seconds * 1000,
                )
            except PlaywrightError as err:
                raise LoginUnreachable(
                    f"could not load WhatsApp Web at {home}: {_first_line(err)}"
                ) from err
            await self.inject()
        except (ProfileBusy, LoginUnreachable):
            await self.close()
            raise
        except PlaywrightError as err:
            await self.close()
            raise RetryableError(
                f"could not open WhatsApp Web for account {self.account!r} (is "
                f"`whatsapp-web-login` running on it?): {_first_line(err)}"
            ) from err

    async def inject(self) -> None:
        """wa-js, then the bridge, unless this document has them already."""
        page = self.page
        if page is None:
            raise RetryableError(f"WhatsApp Web account {self.account!r} has no page")
        async with self._inject_lock:
            if await page.evaluate("() => !!window.__shvya"):
                return
            if not await page.evaluate("() => typeof window.WPP !== 'undefined'"):
                await page.add_script_tag(path=self.settings.whatsapp_web_wa_js_path)
            await page.wait_for_function(
                "() => window.WPP && window.WPP.isReady",
                polling=100,
                timeout=self.settings.whatsapp_web_load_timeout_seconds * 1000,
            )
            await page.evaluate(BRIDGE_JS)

    async def _reinject(self) -> None:
        # WhatsApp Web reloads itself (after linking, after a logout): the new document needs
        # wa-js again.
        with contextlib.suppress(PlaywrightError, RetryableError):
            await self.inject()
            await self._emit("reloaded", None)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _binding(self, _source: Any, kind: str, data: Any) -> None:
        if kind == "auth_code":
            code = data.get("code") if isinstance(data, dict) else None
            if code != self.auth_code:
                self.auth_code = code
                self.auth_code_seq += 1
            self.qr_idle = False
        elif kind == "qr_idle":
            self.qr_idle = True
        elif kind == "logout":
            self.logout_reason = data.get("reason") if isinstance(data, dict) else None
        self._spawn(self._emit(kind, data))

    async def _emit(self, kind: str, data: Any) -> None:
        if self.on_event is None:
            return
        try:
            await self.on_event(self, kind, data)
        except Exception as err:  # one bad event never stops the others
            log.warning(
                "whatsapp_web_event_failed",
                account=self.account,
                kind=kind,
                error=f"{type(err).__name__}: {err}"[:300],
            )

    async def call(self, function: str, *args: Any, timeout: float | None = None) -> Any:
        """Call `window.__shvya.<function>(*args)` in the page."""
        if not self.alive:
            raise RetryableError(f"WhatsApp Web account {self.account!r} has no open page")
        assert self.page is not None
        script = f"(args) => window.__shvya.{function}(...args)"
        run = self.page.evaluate(script, list(args))
        if timeout is None:
            return await run
        return await asyncio.wait_for(run, timeout)

    async def status(self) -> Status:
        try:
            return Status.of(await self.call("status", timeout=15))
        except (PlaywrightError, TimeoutError, RetryableError):
            return Status()

    async def wait_until(self, done: Callable[[Status], bool], timeout: float) -> Status:
        """Poll the page's status until `done` says so or the deadline passes (the last status
        either way)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await self.status()
            if done(status) or loop.time() >= deadline:
                return status
            await asyncio.sleep(POLL_SECONDS)

    async def ready_to_send(self) -> Status:
        """Wait until the session can send; raise what stops it otherwise."""
        status = await self.wait_until(
            lambda s: s.state()[0] not in ("starting", "syncing"),
            self.settings.whatsapp_web_load_timeout_seconds,
        )
        state, reason = status.state()
        if state == "logged_out":
            raise WhatsAppWebLoggedOut(self.account, reason or self.logout_reason)
        if state == "banned":
            raise AccountPausedError(
                self.account, "banned", 0, reason or "banned", pause_seconds=None
            )
        if state == "conflict":
            await self.use_here()
            raise RetryableError(
                f"WhatsApp Web account {self.account!r} was open in another browser; took it "
                "back, the send is tried again"
            )
        if state in ("starting", "syncing", "offline"):
            raise RetryableError(
                f"WhatsApp Web account {self.account!r} is not ready to send ({state}: {reason})"
            )
        return status

    async def use_here(self) -> None:
        """Click WhatsApp's "Use here" (the one control wa-js has no call for)."""
        if self.page is None:
            return
        with contextlib.suppress(PlaywrightError):
            await self.page.locator(sel.USE_HERE_BUTTON).first.click(timeout=5_000)

    async def close(self) -> None:
        context, self.context, self.page = self.context, None, None
        for task in list(self._tasks):
            task.cancel()
        if context is not None:
            with contextlib.suppress(PlaywrightError):
                await context.close()


class WhatsAppWebChannel:
    """Sends through one browser per WhatsApp Web account, one send at a time each.

    Without a supervisor (`shvya_dispatch.web_accounts`) a browser opens on its account's first
    send and stays open; with one, the supervisor decides which accounts this process drives
    (their leases) and `gate` refuses the others before anything is sent."""

    name = "whatsapp_web"

    def __init__(
        self,
        settings: DispatchSettings,
        *,
        rng: random.Random | None = None,
        profiles: Callable[[uuid.UUID], Awaitable[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.browser = WhatsAppWebBrowser(settings)
        self._rng = rng or random.SystemRandom()
        self.sessions: dict[str, WaSession] = {}
        # The company's own account's profile (`shvya_dispatch.accounts`); without it, settings.
        self.profiles = profiles
        # Set by the supervisor: may this process drive the account now (its lease)?
        self.gate: Callable[[str], Awaitable[bool]] | None = None
        self.on_event: EventHandler | None = None
        # Refusals without a code in a row, per account (the supervisor keeps them in the
        # database when it runs).
        self.refusals: Callable[[str, bool], Awaitable[int]] | None = None
        self._local_refusals: dict[str, int] = {}
        # Told each id this channel sends under, so the supervisor can tell our messages from
        # ones typed on the phone.
        self.sent_hook: Callable[[str], None] | None = None
        # Asked again once this send holds the account: a send that waited behind one that
        # paused the account must not go (it raises DeferJob).
        self.recheck: Callable[[str, SendParams], Awaitable[None]] | None = None
        # Records an account's pause before the next send may take the account.
        self.on_pause: Callable[[AccountPausedError], Awaitable[bool]] | None = None

    async def start(self) -> None:
        await self.browser.start()

    async def aclose(self) -> None:
        for session in list(self.sessions.values()):
            async with session.lock.hold(PRIORITY_SHUTDOWN):
                await session.close()
        self.sessions.clear()
        await self.browser.stop()

    async def __aenter__(self) -> WhatsAppWebChannel:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def account_for(self, company_id: uuid.UUID) -> str:
        """The account (browser profile) settings name for this company."""
        return self.settings.whatsapp_web_account_for(company_id)

    async def profile_for(self, company_id: uuid.UUID) -> str:
        """The profile that sends for this company: its own channel account's, else the one
        settings name; the policy engine paces on the same name."""
        if self.profiles is not None:
            return check_account(await self.profiles(company_id))
        return self.account_for(company_id)

    def session(self, account: str) -> WaSession:
        check_account(account)
        session = self.sessions.get(account)
        if session is None:
            session = WaSession(self.browser, account, self._event)
            self.sessions[account] = session
        return session

    async def _event(self, session: WaSession, kind: str, data: Any) -> None:
        if self.on_event is not None:
            await self.on_event(session, kind, data)

    async def close_session(self, account: str) -> None:
        session = self.sessions.pop(account, None)
        if session is not None:
            async with session.lock.hold(PRIORITY_SHUTDOWN):
                await session.close()

    async def send(
        self,
        to: str,
        text: str,
        *,
        template_id: uuid.UUID | None = None,
        message_id: uuid.UUID,
        params: SendParams | None = None,
    ) -> SendResult:
        if params is None:
            raise PermanentError("WhatsApp Web sends need the send request (company)")
        if not text.strip():
            raise PermanentError("WhatsApp Web cannot send an empty message")
        digits = phone_digits(to)
        name = await self.profile_for(params.company_id)
        if self.gate is not None and not await self.gate(name):
            raise AccountElsewhere(
                f"WhatsApp Web account {name!r} is driven by another replica; not sent here"
            )
        session = self.session(name)
        job = CURRENT_JOB.get()
        async with session.lock.hold(job.priority if job is not None else 100):
            if self.recheck is not None:
                await self.recheck(name, params)
            await session.open()
            try:
                provider_id = await self._send_on(session, digits, text, params)
            except AccountPausedError as err:
                if self.on_pause is not None:
                    await self.on_pause(err)
                    err.recorded = True
                raise
            except RetryableError:
                # The page may be wedged; the next attempt starts from a fresh browser.
                await session.close()
                raise
        log.info("whatsapp_web_sent", message_id=str(message_id), account=name)
        return SendResult(provider_message_id=provider_id, meta={"account": name})

    async def _send_on(self, session: WaSession, digits: str, text: str, params: SendParams) -> str:
        s = self.settings
        account = session.account
        try:
            await session.ready_to_send()
            prepared = await session.call(
                "prepare", digits, timeout=s.whatsapp_web_load_timeout_seconds
            )
        except (PlaywrightError, TimeoutError) as err:
            raise RetryableError(
                f"WhatsApp Web could not look up +{digits}: {_first_line(err)}"
            ) from err
        if not isinstance(prepared, dict) or not prepared.get("exists"):
            raise UndeliverableError(0, f"+{digits} is not on WhatsApp")
        wid, wa_id = str(prepared["wid"]), str(prepared["id"])
        if self.sent_hook is not None:
            self.sent_hook(wa_id)
        typing = typing_seconds(text, self._rng, s)
        request = {
            "wid": wid,
            "text": text.replace("\r\n", "\n").replace("\r", "\n"),
            "id": wa_id,
            "typingMs": int(typing * 1000),
            "quoted": params.context_message_id,
        }
        unknown_meta = {"account": account, "provider_message_id": wa_id}
        # From here the message may leave: never report a retryable failure unless the page
        # proves it does not hold the message.
        try:
            result = await session.call(
                "send", request, timeout=typing + s.whatsapp_web_sent_timeout_seconds
            )
        except TimeoutError as err:
            raise SendOutcomeUnknown(
                "WhatsApp Web sent the message but WhatsApp's server did not acknowledge it "
                f"within {s.whatsapp_web_sent_timeout_seconds:g} s; not retried, as it may "
                "have been sent",
                provider_message_id=wa_id,
                meta=unknown_meta,
            ) from err
        except (PlaywrightError, RetryableError) as err:
            raise SendOutcomeUnknown(
                f"the WhatsApp Web page failed during the send ({_first_line(err)}); not "
                "retried, as it may have been sent",
                provider_message_id=wa_id,
                meta=unknown_meta,
            ) from err
        if not isinstance(result, dict):
            raise SendOutcomeUnknown(
                "WhatsApp Web's send gave no answer; not retried, as it may have been sent",
                provider_message_id=wa_id,
                meta=unknown_meta,
            )
        if result.get("error") is not None:
            return await self._after_error(session, result, wa_id, unknown_meta)
        ack = result.get("ack")
        if isinstance(ack, int) and ack >= ACK_SENT:
            await self._refused(account, False)
            return str(result.get("id") or wa_id)
        if isinstance(ack, int) and ack <= ACK_FAILED:
            raise await self._refusal(account, result, digits)
        raise SendOutcomeUnknown(
            f"WhatsApp Web queued the message but the server has not taken it (ack {ack}, "
            f"{result.get('result')}); WhatsApp Web keeps trying on its own, so it is not "
            "repeated",
            provider_message_id=wa_id,
            meta=unknown_meta,
        )

    async def _after_error(
        self, session: WaSession, result: dict[str, Any], wa_id: str, meta: dict[str, Any]
    ) -> str:
        error = result.get("error") or {}
        text = f"{error.get('code') or ''} {error.get('message') or ''}".strip()
        if result.get("timelocked") or re.search(r"\b463\b", text):
            raise self._timelock(session.account)
        try:
            found = await session.call("lookup", wa_id, timeout=15)
        except (PlaywrightError, TimeoutError, RetryableError):
            found = None
        if isinstance(found, dict) and found.get("found") is False:
            raise RetryableError(f"WhatsApp Web did not send the message: {text[:300]}")
        if isinstance(found, dict) and isinstance(found.get("ack"), int):
            if found["ack"] >= ACK_SENT:
                return wa_id
        raise SendOutcomeUnknown(
            f"WhatsApp Web's send failed ({text[:300]}) after the message may have left; not "
            "retried",
            provider_message_id=wa_id,
            meta=meta,
        )

    def _timelock(self, account: str) -> AccountPausedError:
        return AccountPausedError(
            account,
            "timelock",
            TIMELOCK_CODE,
            "WhatsApp's reach-out timelock (463): the account may not start new chats for now",
            pause_seconds=self.settings.whatsapp_web_timelock_pause_seconds,
            scope="new_contacts",
        )

    async def _refusal(self, account: str, result: dict[str, Any], digits: str) -> Exception:
        if result.get("timelocked"):
            return self._timelock(account)
        count = await self._refused(account, True)
        what = f"WhatsApp refused the message to +{digits} (ack failed, {result.get('result')})"
        if count >= self.settings.whatsapp_web_refusals_to_pause:
            return AccountPausedError(
                account,
                "restricted",
                0,
                f"{what}; {count} refusals in a row, so the account looks restricted",
                pause_seconds=self.settings.whatsapp_web_restriction_pause_seconds,
            )
        return WhatsAppWebRefused(what)

    async def _refused(self, account: str, refused: bool) -> int:
        if self.refusals is not None:
            return await self.refusals(account, refused)
        count = self._local_refusals.get(account, 0) + 1 if refused else 0
        self._local_refusals[account] = count
        return count


@dataclass
class LoginOutcome:
    account: str
    me: str | None
    method: str


@dataclass
class LoginHooks:
    """Where a login reports what to show: each new QR (text, PNG), the pairing code."""

    on_qr: Callable[[str, bytes], Awaitable[None]] | None = None
    on_code: Callable[[str], Awaitable[None]] | None = None
    say: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)


class LoginTimeout(Exception):
    """The QR code was not scanned (or the pairing code not entered) in time."""


async def link(
    session: WaSession,
    *,
    phone: str | None,
    timeout: float,
    hooks: LoginHooks,
    max_refreshes: int = 5,
) -> LoginOutcome:
    """Link the session's account: show each QR code (refreshed when WhatsApp lets it go idle,
    at most `max_refreshes` times) or, with `phone`, a pairing code to type on the phone, and
    return once WhatsApp Web is connected."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    status = await session.wait_until(lambda s: s.ready, timeout)
    if status.authenticated and status.mode != "QR":
        return LoginOutcome(session.account, status.me, "already")
    shown_seq = -1
    refreshes = 0
    if phone is not None:
        code = await session.call("pairingCode", phone_digits(phone), timeout=60)
        if hooks.on_code is not None:
            await hooks.on_code(str(code))
    while True:
        status = await session.status()
        if status.authenticated and status.main_ready:
            return LoginOutcome(session.account, status.me, "code" if phone else "qr")
        if phone is None:
            if session.auth_code is None:
                with contextlib.suppress(PlaywrightError, TimeoutError, RetryableError):
                    code = await session.call("authCode", timeout=15)
                    if code and code != session.auth_code:
                        session.auth_code, session.auth_code_seq = code, session.auth_code_seq + 1
            if session.qr_idle and refreshes < max_refreshes:
                refreshes += 1
                session.qr_idle = False
                with contextlib.suppress(PlaywrightError, TimeoutError, RetryableError):
                    code = await session.call("refreshQR", timeout=30)
                    if code and code != session.auth_code:
                        session.auth_code, session.auth_code_seq = code, session.auth_code_seq + 1
            if session.auth_code and session.auth_code_seq != shown_seq:
                shown_seq = session.auth_code_seq
                if hooks.on_qr is not None:
                    await hooks.on_qr(session.auth_code, qr_png(session.auth_code))
        if loop.time() > deadline:
            raise LoginTimeout(
                f"WhatsApp Web account {session.account!r} was not linked within {timeout:g} s"
            )
        await asyncio.sleep(POLL_SECONDS)


async def login(
    settings: DispatchSettings,
    account: str,
    *,
    qr_path: Path | None = None,
    phone: str | None = None,
    wait_seconds: float | None = None,
    settle_seconds: float = 5.0,
    hooks: LoginHooks | None = None,
) -> LoginOutcome:
    """Open the account's profile here and link it (see `link`); the QR is also saved as a PNG
    at `qr_path` each time it changes. Waits `settle_seconds` after linking so the session is
    written to the profile."""
    check_account(account)
    hooks = hooks or LoginHooks()
    timeout = (
        wait_seconds if wait_seconds is not None else settings.whatsapp_web_login_timeout_seconds
    )
    qr_path = qr_path or settings.whatsapp_web_profile_dir / f"{account}-qr.png"
    outer_qr = hooks.on_qr

    async def save(text: str, png: bytes) -> None:
        qr_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = qr_path.with_name(qr_path.name + ".tmp")
        tmp.write_bytes(png)
        tmp.replace(qr_path)  # atomically, so a viewer never sees half a PNG
        hooks.say(
            f"QR code saved to {qr_path.resolve()}: open WhatsApp on the phone, Settings > "
            "Linked devices > Link a device, and scan it"
        )
        if outer_qr is not None:
            await outer_qr(text, png)

    async with WhatsAppWebBrowser(settings) as browser:
        session = WaSession(browser, account)
        try:
            await session.open()
            outcome = await link(
                session,
                phone=phone,
                timeout=timeout,
                hooks=LoginHooks(on_qr=save, on_code=hooks.on_code, say=hooks.say),
            )
            await asyncio.sleep(settle_seconds)
            hooks.say(
                f"WhatsApp Web account {account!r} is linked"
                f"{f' as {outcome.me}' if outcome.me else ''}; its session is kept in "
                f"{browser.profile_dir(account)}"
            )
            return outcome
        finally:
            await session.close()
