"""The log channel: records a send instead of delivering it (the embedded default, and tests).

Its record is the outbound message itself (status 'logged'), one structured log line, and
optionally a JSON-lines file an operator can tail.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import structlog

from shvya_common.contracts import SendParams
from shvya_dispatch.channels.base import SendResult

log = structlog.get_logger(__name__)


class LogChannel:
    name = "log"

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    async def send(
        self,
        to: str,
        text: str,
        *,
        template_id: uuid.UUID | None = None,
        message_id: uuid.UUID,
        params: SendParams | None = None,
    ) -> SendResult:
        record = {
            "message_id": str(message_id),
            "to": to,
            "chars": len(text),
            "template_id": str(template_id) if template_id else None,
            "at": datetime.now(UTC).isoformat(),
        }
        if self.path is not None:
            line = json.dumps({**record, "text": text}) + "\n"
            async with self._lock:
                await asyncio.to_thread(self._append, line)
        log.info("log_channel_send", **record)
        return SendResult(provider_message_id=f"log-{message_id}", status="logged")

    def _append(self, line: str) -> None:
        assert self.path is not None
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
