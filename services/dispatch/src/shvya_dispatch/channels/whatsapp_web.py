"""The WhatsApp Web channel: sends as a logged-in WhatsApp Web session in Debian's Chromium,
driven by Playwright, and the `whatsapp-web-login` command that links an account by QR code.

Each account has its own persistent browser profile (WHATSAPP_WEB_PROFILE_DIR/<account>), so a
session survives restarts. One browser per account is opened on its first send and reused; a lock
per account lets one send at a time drive it, serving waiting sends by their job's priority. A
send opens the chat by phone number, types like a
person (a random delay per character within the configured bounds), clicks send and waits for the
outgoing bubble. Pacing between sends and the daily cap belong to the policy engine, not here.

What WhatsApp Web looks like lives only in `whatsapp_web_selectors`. Outcomes:

    browser or page trouble before send is clicked  → RetryableError
    session logged out (QR shown)                   → WhatsAppWebLoggedOut (a PermanentError)
    number not on WhatsApp (the invalid-phone popup) → PermanentError
    send clicked but no outgoing bubble appeared    → SendOutcomeUnknown: it may have left, so
                                                      it is recorded 'unknown', never retried
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import structlog
from playwright.async_api import BrowserContext, Locator, Page, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from shvya_common.bus.worker import CURRENT_JOB
from shvya_common.contracts import SendParams
from shvya_common.errors import PermanentError, RetryableError
from shvya_common.locks import PriorityLock
from shvya_dispatch.channels import whatsapp_web_selectors as sel
from shvya_dispatch.channels.base import SendResult
from shvya_dispatch.channels.errors import SendOutcomeUnknown
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
QR_MARGIN_PX = 24  # white space kept around the QR in the saved PNG, so phones can read it

# Finds the newest outgoing bubble and returns its WhatsApp id once it is one we had not seen.
_NEW_BUBBLE_JS = """([selector, attribute, seen, count]) => {
  const bubbles = document.querySelectorAll(selector);
  if (bubbles.length === 0) return false;
  const last = bubbles[bubbles.length - 1];
  const holder = last.closest('[' + attribute + ']') || last.querySelector('[' + attribute + ']');
  const id = holder ? holder.getAttribute(attribute) : null;
  if (id) return seen.includes(id) ? false : {id};
  return bubbles.length > count ? {id: null} : false;
}"""
_SEEN_IDS_JS = """([selector, attribute]) => Array.from(
  document.querySelectorAll(selector), (el) => {
  const holder = el.closest('[' + attribute + ']') || el.querySelector('[' + attribute + ']');
  return holder ? holder.getAttribute(attribute) : null;
}).filter(Boolean)"""


class WhatsAppWebLoggedOut(PermanentError):
    """The account's WhatsApp Web session shows the QR login screen; a person must re-link it."""

    def __init__(self, account: str) -> None:
        super().__init__(
            f"WhatsApp Web session logged out for account {account!r}; run "
            f"`python -m shvya_dispatch whatsapp-web-login --account {account}`"
        )
        self.account = account


def phone_digits(to: str) -> str:
    """An international number as WhatsApp's send URL wants it: digits only."""
    digits = re.sub(r"\D", "", to)
    if not 7 <= len(digits) <= 15:
        raise PermanentError(f"not an international phone number: {to!r}")
    return digits


def check_account(account: str) -> str:
    if not re.fullmatch(ACCOUNT_PATTERN, account):
        raise ValueError(f"account name {account!r} must match {ACCOUNT_PATTERN}")
    return account


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
            # The service's own SIGTERM handling closes the browser through its exit stack.
            handle_sigint=False,
            handle_sigterm=False,
            handle_sighup=False,
        )


async def first_page(context: BrowserContext) -> Page:
    return context.pages[0] if context.pages else await context.new_page()


@dataclass
class _Account:
    name: str
    # One send at a time per account; a waiting reply goes before a waiting campaign step.
    lock: PriorityLock = field(default_factory=PriorityLock)
    context: BrowserContext | None = None
    page: Page | None = None


ChatState = Literal["chat", "logged_out", "invalid"]
# Closing the channel waits for the send in hand, ahead of any queued one.
PRIORITY_SHUTDOWN = 1_000


class WhatsAppWebChannel:
    """Sends through one reused browser per WhatsApp Web account, one send at a time each."""

    name = "whatsapp_web"

    def __init__(self, settings: DispatchSettings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.browser = WhatsAppWebBrowser(settings)
        self._rng = rng or random.SystemRandom()
        self._accounts: dict[str, _Account] = {}

    async def start(self) -> None:
        await self.browser.start()

    async def aclose(self) -> None:
        for account in self._accounts.values():
            async with account.lock.hold(PRIORITY_SHUTDOWN):
                await self._drop(account)
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
        """The account (browser profile) that sends for this company; pacing is keyed on it."""
        return self.settings.whatsapp_web_account_for(company_id)

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
        name = self.account_for(params.company_id)
        account = self._accounts.setdefault(name, _Account(name))
        job = CURRENT_JOB.get()
        async with account.lock.hold(job.priority if job is not None else 100):
            page = await self._page(account)
            try:
                provider_id = await self._send_on_page(page, account.name, digits, text)
            except RetryableError:
                # The page may be wedged; the next attempt starts from a fresh browser.
                await self._drop(account)
                raise
        log.info("whatsapp_web_sent", message_id=str(message_id), account=name)
        return SendResult(
            provider_message_id=provider_id or f"waweb-{message_id}", meta={"account": name}
        )

    async def _page(self, account: _Account) -> Page:
        if account.page is not None and not account.page.is_closed():
            return account.page
        await self._drop(account)
        try:
            account.context = await self.browser.open(account.name)
            account.page = await first_page(account.context)
        except PlaywrightError as err:
            await self._drop(account)
            first_line = (
                str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            )
            raise RetryableError(
                f"could not open the browser profile of WhatsApp Web account {account.name!r} "
                f"(is `whatsapp-web-login` running on it?): {first_line}"
            ) from err
        return account.page

    async def _drop(self, account: _Account) -> None:
        context, account.context, account.page = account.context, None, None
        if context is not None:
            try:
                await context.close()
            except PlaywrightError:
                pass  # already gone with its browser

    async def _wait_for_chat(self, page: Page, timeout_ms: float) -> ChatState:
        compose = page.locator(sel.COMPOSE_BOX)
        qr = page.locator(sel.QR_CODE)
        invalid = page.locator(sel.POPUP).filter(has_text=sel.INVALID_PHONE_TEXT)
        await compose.or_(qr).or_(invalid).first.wait_for(state="visible", timeout=timeout_ms)
        if await invalid.count() and await invalid.first.is_visible():
            return "invalid"
        if await qr.count() and await qr.first.is_visible():
            return "logged_out"
        return "chat"

    async def _send_on_page(self, page: Page, account: str, digits: str, text: str) -> str | None:
        s = self.settings
        load_ms = s.whatsapp_web_load_timeout_seconds * 1000
        try:
            await page.goto(
                sel.send_url(s.whatsapp_web_url, digits),
                wait_until="domcontentloaded",
                timeout=load_ms,
            )
            state = await self._wait_for_chat(page, load_ms)
            if state == "logged_out":
                raise WhatsAppWebLoggedOut(account)
            if state == "invalid":
                raise PermanentError(
                    f"+{digits} is not on WhatsApp (WhatsApp Web: phone number shared via url "
                    "is invalid)"
                )
            seen = await page.evaluate(
                _SEEN_IDS_JS, [sel.OUTGOING_MESSAGE, sel.MESSAGE_ID_ATTRIBUTE]
            )
            count = await page.locator(sel.OUTGOING_MESSAGE).count()
            await page.locator(sel.COMPOSE_BOX).first.click(timeout=load_ms)
            await self._type(page, text)
            await page.locator(sel.SEND_BUTTON).first.click(timeout=load_ms)
        except PlaywrightTimeoutError as err:
            raise RetryableError(
                "WhatsApp Web did not open the chat within "
                f"{s.whatsapp_web_load_timeout_seconds:g} s"
            ) from err
        except PlaywrightError as err:
            raise RetryableError(f"WhatsApp Web browser failed before sending: {err}") from err
        # From here the message may have left: never report a retryable failure.
        try:
            handle = await page.wait_for_function(
                _NEW_BUBBLE_JS,
                arg=[sel.OUTGOING_MESSAGE, sel.MESSAGE_ID_ATTRIBUTE, seen, count],
                polling=100,
                timeout=s.whatsapp_web_sent_timeout_seconds * 1000,
            )
            found = await handle.json_value()
        except PlaywrightError as err:
            raise SendOutcomeUnknown(
                "clicked send on WhatsApp Web but no outgoing message appeared within "
                f"{s.whatsapp_web_sent_timeout_seconds:g} s; not retried, as it may have been sent"
            ) from err
        provider_id = found.get("id") if isinstance(found, dict) else None
        return str(provider_id) if provider_id else None

    async def _type(self, page: Page, text: str) -> None:
        """Type one character at a time with a random human-like pause after each."""
        low = self.settings.whatsapp_web_typing_delay_min_ms
        high = self.settings.whatsapp_web_typing_delay_max_ms
        for ch in text.replace("\r\n", "\n").replace("\r", "\n"):
            if ch == "\n":
                await page.keyboard.press("Shift+Enter")  # Enter alone would send
            elif ch == "\t":
                await page.keyboard.insert_text(" ")  # Tab would move the focus away
            else:
                await page.keyboard.type(ch)
            await asyncio.sleep(self._rng.uniform(low, high) / 1000)


class LoginTimeout(Exception):
    """The QR code was not scanned in time."""


async def login(
    settings: DispatchSettings,
    account: str,
    *,
    qr_path: Path | None = None,
    wait_seconds: float | None = None,
    settle_seconds: float = 5.0,
    say: Callable[[str], None] = print,
    on_qr: Callable[[bytes], Awaitable[None]] | None = None,
) -> None:
    """Open the account's profile, save the QR code to a PNG whenever it changes, and return
    once WhatsApp Web shows the chat list (waiting `settle_seconds` so the session is stored).
    `on_qr` gets each new QR's PNG too (the CLI stores it for the console)."""
    check_account(account)
    timeout = (
        wait_seconds if wait_seconds is not None else settings.whatsapp_web_login_timeout_seconds
    )
    qr_path = qr_path or settings.whatsapp_web_profile_dir / f"{account}-qr.png"
    load_ms = settings.whatsapp_web_load_timeout_seconds * 1000
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with WhatsAppWebBrowser(settings) as browser:
        context = await browser.open(account)
        try:
            page = await first_page(context)
            await page.goto(
                sel.home_url(settings.whatsapp_web_url),
                wait_until="domcontentloaded",
                timeout=load_ms,
            )
            last_ref: str | None = None
            saved = False
            while True:
                if await page.locator(sel.LOGGED_IN).first.is_visible():
                    await asyncio.sleep(settle_seconds)
                    say(
                        f"WhatsApp Web account {account!r} is logged in; its session is kept in "
                        f"{browser.profile_dir(account)}"
                    )
                    return
                qr = page.locator(sel.QR_CODE).first
                if await qr.is_visible():
                    container = page.locator(sel.QR_CONTAINER).first
                    ref = (
                        await container.get_attribute(sel.QR_REF_ATTRIBUTE)
                        if await container.count()
                        else None
                    )
                    if not saved or ref != last_ref:
                        png = await _save_qr(page, qr, qr_path)
                        if on_qr is not None:
                            await on_qr(png)
                        say(
                            f"QR code saved to {qr_path.resolve()}: open WhatsApp on the phone, "
                            "Settings > Linked devices > Link a device, and scan it"
                        )
                        last_ref, saved = ref, True
                if loop.time() > deadline:
                    raise LoginTimeout(
                        f"WhatsApp Web account {account!r} was not linked within {timeout:g} s"
                    )
                await asyncio.sleep(0.5)
        finally:
            await context.close()


async def _save_qr(page: Page, qr: Locator, path: Path) -> bytes:
    """Screenshot the QR with a white margin, written atomically so a viewer never sees half."""
    box = await qr.bounding_box()
    if box is None:
        png = await qr.screenshot()
    else:
        x, y = max(box["x"] - QR_MARGIN_PX, 0), max(box["y"] - QR_MARGIN_PX, 0)
        clip = {
            "x": x,
            "y": y,
            "width": box["width"] + 2 * QR_MARGIN_PX,
            "height": box["height"] + 2 * QR_MARGIN_PX,
        }
        png = await page.screenshot(clip=clip)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(png)
    tmp.replace(path)
    return png
