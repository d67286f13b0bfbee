"""What every channel adapter provides."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from shvya_common.contracts import SendParams


@dataclass(frozen=True)
class SendResult:
    """A send that left: the provider's id for it and the status to record."""

    provider_message_id: str
    status: str = "sent"
    meta: dict[str, Any] = field(default_factory=dict)


class Channel(Protocol):
    name: str

    async def send(
        self,
        to: str,
        text: str,
        *,
        template_id: uuid.UUID | None = None,
        message_id: uuid.UUID,
        params: SendParams | None = None,
    ) -> SendResult:
        """Deliver one message. `params` is the whole send request, for adapters that need more
        than the address and text (company, lead, purpose: email's unsubscribe link and bounce
        suppression, WhatsApp Web's account); the router always passes it."""
        ...
