"""The email channel: one message per send over SMTP (aiosmtplib), with RFC 8058 one-click
unsubscribe, open tracking and click tracking.

Each send builds a multipart/alternative `EmailMessage`: the text as written, and an HTML part
made by escaping that text (model output is never trusted as markup), turning its http(s) URLs
into click-tracked links and adding an open pixel. The Message-ID is the provider id. The links
come from `shvya_common.links`, so ingest can verify every token it later receives.

SMTP outcomes map onto the error tree:

    4xx, connection lost, timeout          → RetryableError   (retried on the job schedule)
    5xx (sender, data, login refused)      → PermanentError   (dead-lettered with the reason)
    5xx on RCPT for a bad mailbox (5.1.x)  → PermanentError, and the address is suppressed
"""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Protocol
from urllib.parse import urlsplit

import aiosmtplib
import structlog

from shvya_common import links
from shvya_common.contracts import SendParams
from shvya_common.errors import PermanentError, RetryableError
from shvya_dispatch.channels.base import SendResult
from shvya_dispatch.channels.email_html import prepare_html
from shvya_dispatch.settings import DispatchSettings

log = structlog.get_logger(__name__)

# http(s) URLs in free text; anything else (javascript:, data:, bare hosts) stays plain text.
_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_CLOSERS = {")": "(", "]": "[", "}": "{"}
_PLACEHOLDER = re.compile(r"\{\{\s*(\d+)\s*\}\}")
_ENHANCED_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class EmailContext:
    """What the adapter looks up per send: the company's name and the subjects on offer."""

    company_name: str | None = None
    company_subject: str | None = None
    template_subject: str | None = None


class EmailStore(Protocol):
    """The little the email channel reads and writes in the database."""

    async def email_context(
        self, company_id: uuid.UUID, template_id: uuid.UUID | None
    ) -> EmailContext: ...

    async def suppress_address(
        self, company_id: uuid.UUID, lead_id: uuid.UUID, address: str, reason: str
    ) -> None: ...


def is_hard_bounce(code: int, message: str) -> bool:
    """A 5xx RCPT reply that says the mailbox itself is bad (RFC 3463 5.1.x, or 5.2.1 disabled).

    Policy refusals (5.7.x: relaying denied, our reputation) are the sender's problem, so they
    must not suppress the recipient. Without an enhanced code, 550/551/553 count as bad mailbox.
    """
    if not 500 <= code < 600:
        return False
    status = _ENHANCED_STATUS.search(message)
    if status is None:
        return code in (550, 551, 553)
    klass, subject, detail = status.groups()
    return klass == "5" and (subject == "1" or (subject, detail) == ("2", "1"))


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

    def __init__(self, settings: DispatchSettings, store: EmailStore) -> None:
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
    ) -> EmailMessage:
        """The full message for one send; pure, so its shape can be checked without a server."""
        s = self.settings
        recipient = _recipient(to)
        unsubscribe = links.unsubscribe_url(s, params.company_id, recipient.addr_spec)
        track: Callable[[str], str] | None = None
        if s.email_click_tracking:

            def track(url: str) -> str:
                return links.click_url(s, message_id, url)

        pixel = links.open_pixel_url(s, message_id) if s.email_open_tracking else None
        footer_url = unsubscribe if s.email_unsubscribe_footer else None

        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = recipient
        msg["Subject"] = _one_line(subject)
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = make_msgid(idstring=message_id.hex, domain=self.domain)
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

    async def subject_for(self, params: SendParams) -> str:
        """The send's own subject (a campaign's), else the template subject, the company's
        `email_subject` setting, or the default."""
        if params.subject:
            return params.subject
        ctx = await self.store.email_context(params.company_id, params.template_id)
        if ctx.template_subject:
            return fill_placeholders(ctx.template_subject, params.template_params)
        if ctx.company_subject:
            return ctx.company_subject
        company = ctx.company_name or self.sender.display_name or self.sender.domain
        return self.settings.email_default_subject.replace("{company}", company)

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
        subject = await self.subject_for(params)
        msg = self.build_message(to, text, message_id=message_id, params=params, subject=subject)
        recipient = _recipient(to).addr_spec
        await self._deliver(msg, recipient, params)
        provider_id = str(msg["Message-ID"])
        log.info(
            "email_sent",
            message_id=str(message_id),
            domain=recipient.rsplit("@", 1)[-1],
            provider_message_id=provider_id,
        )
        return SendResult(provider_message_id=provider_id, meta={"subject": str(msg["Subject"])})

    async def _deliver(self, msg: EmailMessage, recipient: str, params: SendParams) -> None:
        s = self.settings
        password = s.smtp_password.get_secret_value() if s.smtp_password is not None else None
        async with self._slots:
            try:
                async with aiosmtplib.SMTP(
                    hostname=s.smtp_host,
                    port=s.smtp_port_effective,
                    username=s.smtp_user or None,
                    password=password if s.smtp_user else None,
                    local_hostname=self.domain,
                    timeout=s.smtp_timeout_seconds,
                    use_tls=s.smtp_security == "tls",
                    start_tls=s.smtp_security == "starttls",
                    cert_bundle=str(s.smtp_ca_file) if s.smtp_ca_file else None,
                ) as smtp:
                    await smtp.send_message(
                        msg, sender=self.sender.addr_spec, recipients=[recipient]
                    )
            except aiosmtplib.SMTPRecipientsRefused as err:
                refused = err.recipients[0]
                raise await self._refused(refused.code, refused.message, recipient, params) from err
            except aiosmtplib.SMTPRecipientRefused as err:
                raise await self._refused(err.code, err.message, recipient, params) from err
            except aiosmtplib.SMTPResponseException as err:
                raise _by_code(err.code, f"SMTP server answered {err.code} {err.message}") from err
            except (aiosmtplib.SMTPTimeoutError, TimeoutError) as err:
                raise RetryableError(f"SMTP timed out talking to {s.smtp_host}") from err
            except aiosmtplib.SMTPNotSupported as err:
                raise PermanentError(f"SMTP server does not support this: {err.message}") from err
            except (aiosmtplib.SMTPException, OSError) as err:
                raise RetryableError(f"SMTP connection to {s.smtp_host} failed: {err}") from err
            except ValueError as err:
                raise PermanentError(f"address cannot be sent over SMTP: {err}") from err

    async def _refused(
        self, code: int, message: str, recipient: str, params: SendParams
    ) -> RetryableError | PermanentError:
        """Suppress a hard-bounced address; return the error the refusal maps to."""
        reason = f"SMTP server refused the recipient: {code} {message}"
        if is_hard_bounce(code, message):
            await self.store.suppress_address(
                params.company_id,
                params.lead_id,
                links.email_address_key(recipient),
                f"hard bounce: {code} {message}",
            )
            log.info("email_hard_bounce_suppressed", code=code, lead_id=str(params.lead_id))
        return _by_code(code, reason)


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
