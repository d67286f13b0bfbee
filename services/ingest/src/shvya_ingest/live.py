"""The live hub: one core NATS subscription per ingest process to `<prefix>.live.*` (the
scheduler's event feed publishes a `LiveNotice` per company after each pass), fanned out to the
open console streams of that company only.

Nothing here is the data: a notice tells a page which events were written, and the page
re-reads through the API. Whenever a stream may have missed notices it is told `resync`
instead, and the page re-reads everything it shows:

- NATS came back after a disconnect (the hub watches the connection);
- the stream's buffer filled (a slow client);
- the stream (re)connected (the page does this itself on every `hello`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from shvya_common.contracts import Topology
from shvya_common.contracts.live import LiveNotice
from shvya_common.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

BUFFER = 64
WATCH_SECONDS = 0.25


@dataclass(frozen=True)
class Resync:
    """The stream may have missed notices: re-read everything."""

    reason: str


Item = LiveNotice | Resync


@dataclass(eq=False)
class Listener:
    """One open stream's queue of notices."""

    company_id: uuid.UUID
    queue: asyncio.Queue[Item] = field(default_factory=lambda: asyncio.Queue(BUFFER))

    def offer(self, item: Item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # Whatever was waiting is superseded by one "re-read everything".
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(Resync("buffer_full"))


class LiveHub:
    def __init__(self, nc: NATS, topology: Topology) -> None:
        self.nc = nc
        self.topology = topology
        self._listeners: dict[uuid.UUID, set[Listener]] = {}
        self._sub: object | None = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.topology.live_subjects, cb=self._on_message)
        self._watch = asyncio.create_task(self._watch_connection(), name="live-hub-watch")

    async def close(self) -> None:
        if self._watch is not None:
            await cancel_and_wait([self._watch])
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()  # type: ignore[attr-defined]
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.offer(Resync("closing"))

    @contextlib.contextmanager
    def listen(self, company_id: uuid.UUID) -> Iterator[Listener]:
        listener = Listener(company_id)
        self._listeners.setdefault(company_id, set()).add(listener)
        try:
            yield listener
        finally:
            listeners = self._listeners.get(company_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[company_id]

    @property
    def open_streams(self) -> int:
        return sum(len(v) for v in self._listeners.values())

    def deliver(self, notice: LiveNotice) -> None:
        """Hand a notice to the streams of its company (and no other)."""
        for listener in tuple(self._listeners.get(notice.company_id, ())):
            listener.offer(notice)

    async def _on_message(self, msg: Msg) -> None:
        try:
            notice = LiveNotice.model_validate_json(msg.data)
        except ValidationError:
            log.warning("live_notice_unreadable", subject=msg.subject)
            return
        # The subject names the company too; a notice must agree with it.
        if msg.subject != self.topology.live_subject(notice.company_id):
            log.warning("live_notice_subject_mismatch", subject=msg.subject)
            return
        self.deliver(notice)

    async def _watch_connection(self) -> None:
        """After a NATS outage every stream re-reads: notices published meanwhile are gone."""
        was_connected = self.nc.is_connected
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            connected = self.nc.is_connected
            if connected and not was_connected:
                log.info("live_hub_resync", streams=self.open_streams)
                for listeners in tuple(self._listeners.values()):
                    for listener in tuple(listeners):
                        listener.offer(Resync("nats_reconnected"))
            was_connected = connected
