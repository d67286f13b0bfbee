"""The email channel: one message per send over SMTP (aiosmtplib), written the way mailbox
providers read it: threaded replies, raw RFC 8058 one-click unsubscribe headers, optional DKIM
signing per company, open and click tracking.

Each send builds a multipart/alternative message: the text as written, and an HTML part made by
escaping that text (model output is never trusted as markup), turning its http(s) URLs into
click-tracked links and, except on transactional mail, adding an open pixel. Headers go out raw
(`mailheaders.MAIL_POLICY`). The Message-ID is derived from the outbound message's id
(`shvya_common.emailfacts`) and is the provider id. A reply carries `In-Reply-To`, `References`
and `Re: <the lead's subject>`; AI replies carry `Auto-Submitted: auto-replied` (RFC 3834), other
automated mail `auto-generated`, so auto-responders leave them alone.

The SMTP session runs MAIL, RCPT and DATA as separate steps, because what a failure means
depends on when it happens:

    before DATA: 4xx, connection lost, timeout → RetryableError    (retried on the job schedule)
                 5xx (sender, login refused)   → PermanentError    (dead-lettered with the reason)
                 5xx on RCPT for a bad mailbox → PermanentError, and the address is suppressed
    DATA or after, an explicit 4xx/5xx reply   → RetryableError / PermanentError: the server said
                                                 it did not take the message (RFC 5321 §4.2.5)
    DATA or after, no reply (connection lost,  → SendOutcomeUnknown: the message may have been
                 timeout)                        accepted (RFC 1047); recorded 'unknown', never
                                                 retried, so it cannot arrive twice
"""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Protocol
from urllib.parse import urlsplit

import aiosmtplib
import structlog

from shvya_common import links
from shvya_common.contracts import SendParams
from shvya_common.crypto import SecretBox, SecretsError
from shvya_common.emailfacts import bare_message_id, is_hard_bounce, outbound_message_id
from shvya_common.errors import PermanentError, RetryableError
from shvya_dispatch.channels.base import SendResult
from shvya_dispatch.channels.dkim import DkimKey, open_key
from shvya_dispatch.channels.email_html import prepare_html
from shvya_dispatch.channels.errors import SendOutcomeUnknown
from shvya_dispatch.channels.mailheaders import (
    MAIL_POLICY,
    HeaderTooLong,
    reply_subject,
    thread_references,
)
from shvya_dispatch.settings import DispatchSettings

log = structlog.get_logger(__name__)

# http(s) URLs in free text; anything else (javascript:, data:, bare hosts) stays plain text.
_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_CLOSERS = {")": "(", "]": "[", "}": "{"}
_PLACEHOLDER = re.compile(r"\{\{\s*(\d+)\s*\}\}")
# Answers to something the lead did: no open pixel unless the company asks for one.
TRANSACTIONAL = frozenset({"reply", "optout_confirmation", "notification"})
# Automatic answers to a message (RFC 3834 "auto-replied"); other automated mail is
# "auto-generated".
AUTO_REPLIED = frozenset({"reply", "optout_confirmation"})
# Asks Exchange and Outlook not to answer our mail with out-of-office or auto-replies; delivery
# reports (NDRs) are still sent, because bounces must reach us.
AUTO_RESPONSE_SUPPRESS = "OOF, AutoReply"


@dataclass(frozen=True)
class Thread:
    """The message a reply answers: its Message-ID (with brackets), its own threading headers
    and its subject."""

    message_id: str
    references: tuple[str, ...] = ()
    in_reply_to: str | None = None
    subject: str | None = None


@dataclass(frozen=True)
class EmailContext:
    """What the adapter looks up per send: the company's name and subjects, the message a reply
    answers, the company's open-tracking choice for replies, and its DKIM key for the domain."""

    company_name: str | None = None
    company_subject: str | None = None
    template_subject: str | None = None
    reply_open_tracking: bool = False
    thread: Thread | None = None
    dkim_selector: str | None = None
    dkim_private_key: str | None = field(default=None, repr=False)


class EmailStore(Protocol):
    """The little the email channel reads and writes in the database."""

    async def email_context(
        self,
        company_id: uuid.UUID,
        template_id: uuid.UUID | None,
        reply_to_message_id: uuid.UUID | None = None,
        domain: str | None = None,
    ) -> EmailContext: ...

    async def suppress_address(
        self, company_id: uuid.UUID, lead_id: uuid.UUID, address: str, reason: str
    ) -> None: ...


def fill_placeholders(text: str, values: list[str]) -> str:
    """Replace `{{1}}`, `{{2}}`, ... with the template parameters (unknown ones stay visible)."""

    def one(match: re.Match[str]) -> str:
        index = int(match.group(1)) - 1
        return values[index] if 0 <= index < len(values) else match.group(0)

    return _PLACEHOLDER.sub(one, text)


def _split_trailing(url: str) -> tuple[str, str]:
    """Split sentence punctuation and unbalanced closing brackets off the end of a URL."""
    end = len(url)
    while end > 0:
        ch = url[end - 1]
        if ch in ".,;:!?'\"":
            end -= 1
            continue
        opener = _CLOSERS.get(ch)
        if opener is not None and url[:end].count(opener) < url[:end].count(ch):
            end -= 1
            continue
        break
    return url[:end], url[end:]


def _linkify(line: str, track: Callable[[str], str] | None) -> str:
    """Escape one line of text, turning its http(s) URLs into (tracked) links."""
    out: list[str] = []
    pos = 0
    for match in _URL.finditer(line):
        url, rest = _split_trailing(match.group(0))
        if not urlsplit(url).hostname:
            continue
        href = track(url) if track is not None else url
        out.append(html.escape(line[pos : match.start()]))
        out.append(f'<a href="{html.escape(href, quote=True)}">{html.escape(url)}</a>')
        out.append(html.escape(rest))
        pos = match.end()
    out.append(html.escape(line[pos:]))
    return "".join(out)


def render_html(
    text: str,
    *,
    track: Callable[[str], str] | None = None,
    pixel_url: str | None = None,
    unsubscribe_url: str | None = None,
) -> str:
    """The HTML part: the text escaped, paragraphs and line breaks kept, links made clickable."""
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")) if p.strip()]
    body = "\n".join(
        "<p>" + "<br>\n".join(_linkify(line, track) for line in p.split("\n")) + "</p>"
        for p in paragraphs
    )
    footer = ""
    if unsubscribe_url is not None:
        href = html.escape(unsubscribe_url, quote=True)
        footer = (
            '\n<p style="font-size:12px;color:#777">Don\'t want these emails?'
            f' <a href="{href}">Unsubscribe</a></p>'
        )
    pixel = ""
    if pixel_url is not None:
        src = html.escape(pixel_url, quote=True)
        pixel = (
            f'\n<img src="{src}" width="1" height="1" alt="" style="border:0;width:1px;height:1px">'
        )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        '<body style="font-family:Arial,Helvetica,sans-serif;font-size:15px;line-height:1.5">\n'
        f"{body}{footer}{pixel}\n</body></html>\n"
    )


def _one_line(value: str) -> str:
    """Header values never carry line breaks (no header injection from templates)."""
    return " ".join(value.split())


class EmailChannel:
    """Sends one email per call over a fresh SMTP session (at most SMTP_MAX_CONNECTIONS at once)."""

    name = "email"

    def __init__(
        self,
        settings: DispatchSettings,
        store: EmailStore,
        box: SecretBox | None = None,
        *,
        reply_to: str | None = None,
    ) -> None:
        if not settings.smtp_host or not settings.smtp_from:
            raise ValueError("the email channel needs SMTP_HOST and SMTP_FROM")
        try:
            self.sender = Address(
                display_name=_one_line(settings.smtp_from_name or ""), addr_spec=settings.smtp_from
            )
        except (ValueError, IndexError) as err:
            raise ValueError(f"SMTP_FROM is not an email address: {settings.smtp_from!r}") from err
        if not self.sender.domain:
            raise ValueError(f"SMTP_FROM has no domain: {settings.smtp_from!r}")
        self.settings = settings
        self.store = store
        self.reply_to = reply_to
        self.box = box if box is not None else settings.secret_box()
        self.domain = settings.smtp_message_id_domain or self.sender.domain
        self._slots = asyncio.Semaphore(settings.smtp_max_connections)

    def build_message(
        self,
        to: str,
        text: str,
        *,
        message_id: uuid.UUID,
        params: SendParams,
        subject: str,
        ctx: EmailContext | None = None,
    ) -> EmailMessage:
        """The full message for one send; pure, so its shape can be checked without a server."""
        s = self.settings
        ctx = ctx or EmailContext()
        recipient = _recipient(to)
        unsubscribe = links.unsubscribe_url(s, params.company_id, recipient.addr_spec)
        track: Callable[[str], str] | None = None
        if s.email_click_tracking:

            def track(url: str) -> str:
                return links.click_url(s, message_id, url)

        pixel = None
        if s.email_open_tracking and (
            params.purpose not in TRANSACTIONAL or ctx.reply_open_tracking
        ):
            pixel = links.open_pixel_url(s, message_id)
        footer_url = unsubscribe if s.email_unsubscribe_footer else None

        msg = EmailMessage(policy=MAIL_POLICY)
        msg["From"] = self.sender
        if self.reply_to:
            msg["Reply-To"] = Address(addr_spec=self.reply_to)
        msg["To"] = recipient
        msg["Subject"] = _one_line(subject)
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = outbound_message_id(message_id, self.domain)
        if ctx.thread is not None:
            parent = ctx.thread
            msg["In-Reply-To"] = parent.message_id
            references = thread_references(parent.message_id, parent.references, parent.in_reply_to)
            msg["References"] = " ".join(references)
        msg["Auto-Submitted"] = (
            "auto-replied" if params.purpose in AUTO_REPLIED else "auto-generated"
        )
        msg["X-Auto-Response-Suppress"] = AUTO_RESPONSE_SUPPRESS
        unsubscribe_targets = [f"<{unsubscribe}>"]
        if s.email_unsubscribe_mailto:
            unsubscribe_targets.append(f"<mailto:{s.email_unsubscribe_mailto}?subject=unsubscribe>")
        msg["List-Unsubscribe"] = ", ".join(unsubscribe_targets)
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        plain = text.rstrip() + "\n"
        if footer_url is not None:
            plain += f"\n--\nDon't want these emails? Unsubscribe: {footer_url}\n"
        msg.set_content(plain)
        if params.html is not None:  # written for this send (a campaign): links tracked
            body = prepare_html(
                params.html, track=track, pixel_url=pixel, unsubscribe_url=footer_url
            )
        else:
            body = render_html(text, track=track, pixel_url=pixel, unsubscribe_url=footer_url)
        msg.add_alternative(body, subtype="html")
        return msg

    def render(self, msg: EmailMessage, dkim_key: DkimKey | None) -> bytes:
        """The bytes that go on the wire: headers raw, CRLF line ends, DKIM-signed if a key is
        given."""
        try:
            raw = msg.as_bytes(policy=MAIL_POLICY)
        except HeaderTooLong as err:
            raise PermanentError(f"cannot write this email: {err}") from err
        return dkim_key.sign(raw) if dkim_key is not None else raw

    def subject_for(self, params: SendParams, ctx: EmailContext) -> str:
        """The send's own subject (a campaign's); a reply's `Re: <subject>`; else the template
        subject, the company's `email_subject` setting, or the default."""
        if params.subject:
            return params.subject
        if ctx.thread is not None:
            threaded = reply_subject(ctx.thread.subject)
            if threaded:
                return threaded
        if ctx.template_subject:
            return fill_placeholders(ctx.template_subject, params.template_params)
        if ctx.company_subject:
            return ctx.company_subject
        company = ctx.company_name or self.sender.display_name or self.sender.domain
        return self.settings.email_default_subject.replace("{company}", company)

    def _dkim_key(self, params: SendParams, ctx: EmailContext) -> DkimKey | None:
        if ctx.dkim_private_key is None or ctx.dkim_selector is None:
            return None
        try:
            return open_key(
                self.box,
                params.company_id,
                self.sender.domain or "",
                ctx.dkim_selector,
                ctx.dkim_private_key,
            )
        except SecretsError as err:
            # Sending unsigned would pass a failing DMARC check off as delivered mail.
            raise PermanentError(f"the company's DKIM key cannot be used: {err}") from err

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
            raise PermanentError("email sends need the send request (company, lead)")
        ctx = await self.store.email_context(
            params.company_id,
            params.template_id,
            params.reply_to_message_id,
            (self.sender.domain or "").lower(),
        )
        subject = self.subject_for(params, ctx)
        msg = self.build_message(
            to, text, message_id=message_id, params=params, subject=subject, ctx=ctx
        )
        dkim_key = self._dkim_key(params, ctx)
        raw = self.render(msg, dkim_key)
        recipient = _recipient(to).addr_spec
        await self._deliver(raw, recipient, params)
        provider_id = bare_message_id(str(msg["Message-ID"])) or ""
        log.info(
            "email_sent",
            message_id=str(message_id),
            domain=recipient.rsplit("@", 1)[-1],
            provider_message_id=provider_id,
            threaded=ctx.thread is not None,
            dkim=dkim_key is not None,
        )
        meta: dict[str, object] = {"subject": str(msg["Subject"])}
        if ctx.thread is not None:
            meta["in_reply_to"] = bare_message_id(ctx.thread.message_id)
        return SendResult(provider_message_id=provider_id, meta=meta)

    def _session(self) -> aiosmtplib.SMTP:
        s = self.settings
        password = s.smtp_password.get_secret_value() if s.smtp_password is not None else None
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port_effective,
            username=s.smtp_user or None,
            password=password if s.smtp_user else None,
            local_hostname=self.domain,
            timeout=s.smtp_timeout_seconds,
            use_tls=s.smtp_security == "tls",
            start_tls=s.smtp_security == "starttls",
            cert_bundle=str(s.smtp_ca_file) if s.smtp_ca_file else None,
        )

    async def _deliver(self, raw: bytes, recipient: str, params: SendParams) -> None:
        async with self._slots:
            smtp = self._session()
            try:
                await self._envelope(smtp, recipient, params)
                await self._data(smtp, raw)
            finally:
                await _close(smtp)

    async def _envelope(self, smtp: aiosmtplib.SMTP, recipient: str, params: SendParams) -> None:
        """Connect (TLS, AUTH), MAIL and RCPT: nothing has been handed over yet."""
        host = self.settings.smtp_host
        try:
            await smtp.connect()
            await smtp.mail(self.sender.addr_spec)
            await smtp.rcpt(recipient)
        except aiosmtplib.SMTPRecipientRefused as err:
            raise await self._refused(err.code, err.message, recipient, params) from err
        except aiosmtplib.SMTPResponseException as err:
            raise _by_code(err.code, f"SMTP server answered {err.code} {err.message}") from err
        except (aiosmtplib.SMTPTimeoutError, TimeoutError) as err:
            raise RetryableError(f"SMTP timed out talking to {host}") from err
        except aiosmtplib.SMTPNotSupported as err:
            raise PermanentError(f"SMTP server does not support this: {err.message}") from err
        except (aiosmtplib.SMTPException, OSError) as err:
            raise RetryableError(f"SMTP connection to {host} failed: {err}") from err
        except ValueError as err:
            raise PermanentError(f"address cannot be sent over SMTP: {err}") from err

    async def _data(self, smtp: aiosmtplib.SMTP, raw: bytes) -> None:
        """DATA: from here a failure without a reply may mean the message was accepted."""
        host = self.settings.smtp_host
        try:
            await smtp.data(raw)
        except aiosmtplib.SMTPResponseException as err:
            reason = f"SMTP server refused the message: {err.code} {err.message}"
            raise _by_code(err.code, reason) from err
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            raise SendOutcomeUnknown(
                f"SMTP session with {host} ended during DATA without a reply"
                f" ({type(err).__name__}); the message may have been delivered"
            ) from err

    async def _refused(
        self, code: int, message: str, recipient: str, params: SendParams
    ) -> RetryableError | PermanentError:
        """Suppress a hard-bounced address; return the error the refusal maps to."""
        reason = f"SMTP server refused the recipient: {code} {message}"
        if 500 <= code < 600 and is_hard_bounce(code, message):
            await self.store.suppress_address(
                params.company_id,
                params.lead_id,
                links.email_address_key(recipient),
                f"hard bounce: {code} {message}",
            )
            log.info("email_hard_bounce_suppressed", code=code, lead_id=str(params.lead_id))
        return _by_code(code, reason)


async def _close(smtp: aiosmtplib.SMTP) -> None:
    """QUIT politely when the session is still up; a failure here changes nothing sent."""
    if not smtp.is_connected:
        return
    try:
        await smtp.quit(timeout=5)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        smtp.close()


def _recipient(to: str) -> Address:
    try:
        recipient = Address(addr_spec=to.strip())
    except (ValueError, IndexError) as err:
        raise PermanentError(f"not an email address: {to!r}") from err
    if not recipient.username or not recipient.domain:
        raise PermanentError(f"not an email address: {to!r}")
    return recipient


def _by_code(code: int, reason: str) -> RetryableError | PermanentError:
    if 400 <= code < 500:
        return RetryableError(reason)
    return PermanentError(reason)
