"""A resolver for tests: the running loop's `getaddrinfo` answers from a table of names, so the
SSRF guard can be shown public, private and mixed answers without a DNS server."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest


class FakeDNS:
    def __init__(self) -> None:
        self.table: dict[str, list[str]] = {}
        self.calls: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", self.getaddrinfo)
        return self

    async def getaddrinfo(self, host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in self.table[host]
        ]
