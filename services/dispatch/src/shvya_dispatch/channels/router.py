"""Routes a send to its channel's adapter; unconfigured channels go to the log channel when the
settings say so, with the substitution recorded on the message."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import replace
from typing import Literal

from opentelemetry.trace import SpanKind

from shvya_common import tracing
from shvya_common.contracts import SendParams
from shvya_common.errors import PermanentError
from shvya_dispatch.channels.base import Channel, SendResult


class ChannelRouter:
    def __init__(
        self,
        channels: dict[str, Channel],
        fallback: Channel | None,
        unconfigured: Literal["log", "fail"] = "log",
    ) -> None:
        self.channels = channels
        self.fallback = fallback
        self.unconfigured = unconfigured

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
