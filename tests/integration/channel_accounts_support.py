"""Helpers for the per-company channel account tests: companies and their accounts made through
the real /v1 API, SMTP servers that keep what they receive, and secret-hunting in rows."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from shvya_common.embedded import free_port
from tests.keys import bearer

# Two keys: the first seals; `k_old` alone is what a keyring looked like before a rotation.
KEY_NEW = "k_new:" + base64.urlsafe_b64encode(b"N" * 32).rstrip(b"=").decode()
KEY_OLD = "k_old:" + base64.urlsafe_b64encode(b"O" * 32).rstrip(b"=").decode()
SECRETS_KEYS = KEY_NEW
# aiosmtpd warns, on every connection, that AUTH without TLS is unsafe: so it is, in a test.
AUTH_WITHOUT_TLS = "ignore:Requiring AUTH while not requiring TLS:UserWarning"


@dataclass
class Tenant:
    """A company made by the operator, with its first admin key."""

    id: uuid.UUID
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.key)


async def make_tenant(api: httpx.AsyncClient, admin_token: str, name: str) -> Tenant:
    created = await api.post("/v1/companies", json={"name": name}, headers=bearer(admin_token))
    assert created.status_code == 201, created.text
    body = created.json()
    return Tenant(uuid.UUID(body["company"]["id"]), body["admin_key"]["key"])


async def add_account(
    api: httpx.AsyncClient,
    tenant: Tenant,
    channel: str,
    config: dict[str, Any],
    secrets: dict[str, str] | None = None,
    name: str = "main",
    *,
    operator: str | None = None,
) -> dict[str, Any]:
    """An account made by the company's admin key, or by the platform operator (whose token is
    `operator`) for a number the operator vouches for."""
    answer = await api.post(
        f"/v1/companies/{tenant.id}/channel-accounts" if operator else "/v1/channel-accounts",
        json={"channel": channel, "name": name, "config": config, "secrets": secrets or {}},
        headers=bearer(operator) if operator else tenant.auth,
    )
    assert answer.status_code == 201, answer.text
    account: dict[str, Any] = answer.json()
    return account


@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps each message it takes, with the login it came with."""

    received: list[dict[str, Any]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "content": envelope.original_content or envelope.content,
                "login": session.auth_data.login.decode() if session.auth_data else None,
            }
        )
        return "250 2.0.0 queued"


@contextmanager
def smtp_server(login: tuple[str, str] | None = None) -> Iterator[tuple[int, Mailbox]]:
    """A real SMTP server on a free port; with `login`, AUTH is required over plain text (its
    tests ignore aiosmtpd's warning about that: `AUTH_WITHOUT_TLS`)."""
    mailbox = Mailbox()
    kwargs: dict[str, Any] = {}
    if login is not None:
        expected = (login[0].encode(), login[1].encode())

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: Any, data: Any):  # type: ignore[no-untyped-def]
            ok = isinstance(data, LoginPassword) and tuple(data) == expected
            return AuthResult(success=ok, handled=False, auth_data=data)

        kwargs = {"authenticator": authenticate, "auth_required": True, "auth_require_tls": False}
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port, mailbox
    finally:
        controller.stop()


async def plaintext_hits(pool: asyncpg.Pool, needles: list[str]) -> list[str]:
    """Which tables hold any of `needles` in plain text anywhere in a row."""
    tables = [
        r["table_name"]
        for r in await pool.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
    ]
    hits = []
    for table in tables:
        rows = await pool.fetch(f'SELECT t::text AS row FROM "{table}" t')
        text = "\n".join(r["row"] for r in rows)
        hits += [f"{table}: {n[:6]}..." for n in needles if n in text]
    return hits


def dumps(value: Any) -> str:
    return json.dumps(value, default=str)
