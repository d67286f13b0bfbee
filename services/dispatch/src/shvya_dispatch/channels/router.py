"""Routes a send to its adapter: the company's own account on the channel when it has one
(`CompanyAdapters`, see `shvya_dispatch.accounts`), else the platform's adapter from settings;
unconfigured channels go to the log channel when the settings say so, with the substitution
recorded on the message. A send through a company's account records the account's id in the
message's meta, and a failed one makes the account be read again before the next send."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import replace
from typing import Literal, Protocol

from opentelemetry.trace import SpanKind

from shvya_common import tracing
from shvya_common.contracts import SendParams
from shvya_common.errors import DeferJob, PermanentError
from shvya_dispatch.channels.base import Channel, SendResult


class AccountAdapterLike(Protocol):
    @property
    def account_id(self) -> uuid.UUID: ...

    @property
    def channel(self) -> Channel: ...


class CompanyAdapters(Protocol):
    """Adapters that send as one company's own account."""

    async def adapter(self, channel: str, company_id: uuid.UUID) -> AccountAdapterLike | None: ...

    def forget(self, company_id: uuid.UUID, channel: str) -> None: ...


class ChannelRouter:
    def __init__(
        self,
        channels: dict[str, Channel],
        fallback: Channel | None,
        unconfigured: Literal["log", "fail"] = "log",
        accounts: CompanyAdapters | None = None,
    ) -> None:
        self.channels = channels
        self.fallback = fallback
        self.unconfigured = unconfigured
        self.accounts = accounts

    async def send(
        self,
        to: str,
        text: str,
        channel: str,
        template_id: uuid.UUID | None = None,
        *,
        message_id: uuid.UUID,
        params: SendParams | None = None,
    ) -> SendResult:
        if self.accounts is not None and params is not None:
            own = await self.accounts.adapter(channel, params.company_id)
            if own is not None:
                try:
                    result = await own.channel.send(
                        to, text, template_id=template_id, message_id=message_id, params=params
                    )
                except DeferJob:
                    raise
                except Exception:
                    # A refused token or login is often fixed by a new one: read it again.
                    self.accounts.forget(params.company_id, channel)
                    raise
                return replace(result, meta={**result.meta, "channel_account": str(own.account_id)})
        adapter = self.channels.get(channel)
        if adapter is not None:
            with _provider_span(adapter.name, channel, message_id):
                return await adapter.send(
                    to, text, template_id=template_id, message_id=message_id, params=params
                )
        if self.unconfigured == "log" and self.fallback is not None:
            with _provider_span(self.fallback.name, channel, message_id):
                result = await self.fallback.send(
                    to, text, template_id=template_id, message_id=message_id, params=params
                )
            meta = {
                **result.meta,
                "routed_to": self.fallback.name,
                "reason": f"channel {channel!r} has no credentials configured",
            }
            return replace(result, meta=meta)
        raise PermanentError(f"channel {channel!r} is not configured")


def _provider_span(
    adapter: str, channel: str, message_id: uuid.UUID
) -> contextlib.AbstractContextManager[object]:
    """The span of one call to a channel's provider (the log channel when it stands in)."""
    return tracing.span(
        f"{adapter} send",
        kind=SpanKind.CLIENT,
        attributes={
            "shvya.channel": channel,
            "shvya.adapter": adapter,
            "shvya.message_id": str(message_id),
        },
    )
