"""What reached the providers, counted per recipient: the fake Graph API's accepted requests and
the messages a real aiosmtpd server received.

A delivery is counted where the customer may have got the message: for WhatsApp Cloud, a request
Graph answered with a wamid; for email, a DATA whose content the server read in full, whether or
not it then answered (after the content arrives the client cannot tell a queued message from a
lost one, RFC 1047).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiosmtpd.controller import Controller

from shvya_common.embedded import free_port
from tests.fakes.graph_server import FakeGraph


def phone_key(number: str) -> str:
    """A phone number's digits, as Graph's `to` carries them and as leads.phone_e164 has them."""
    return re.sub(r"\D", "", number)


def email_key(address: str) -> str:
    return address.strip().lower()


def graph_deliveries(graph: FakeGraph) -> Counter[str]:
    """Messages Graph accepted, per recipient."""
    return Counter(phone_key(r.body["to"]) for r in graph.sent)


class SmtpSink:
    """An aiosmtpd handler that counts each message per recipient. The first `drop_first` DATA
    commands of each recipient have their connection dropped after the content arrived and
    before the reply, as a server that crashes or a network that fails at that moment."""

    def __init__(self, drop_first: int = 0) -> None:
        self.drop_first = drop_first
        self.deliveries: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        rcpts = [email_key(a) for a in envelope.rcpt_tos]
        drop = False
        with self._lock:
            for rcpt in rcpts:
                self.deliveries[rcpt] += 1
                if self.dropped[rcpt] < self.drop_first:
                    self.dropped[rcpt] += 1
                    drop = True
        if drop:
            server.transport.abort()  # no reply: the client sees the connection reset
            return "421 4.3.0 connection dropped by the fault suite"
        return "250 2.0.0 queued"

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.deliveries)


@contextmanager
def smtp_server(sink: SmtpSink) -> Iterator[int]:
    """Serve `sink` on a free loopback port (plain SMTP) for the block's duration."""
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
