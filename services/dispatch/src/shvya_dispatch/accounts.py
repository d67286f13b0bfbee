"""Which account sends a company's messages on each channel, and the adapter built from it.

    CompanyChannels.adapter(channel, company_id)
        the company's default account on the channel (`channel_accounts`, secrets opened with
        SECRETS_KEYS) → an adapter built from it, kept while the account is unchanged:
            whatsapp_cloud  its phone number id and token (and Graph version / base URL)
            email           its SMTP server, login and sender; or, without `smtp_host`, the
                            platform's relay (SMTP_*) with the company's From address
            whatsapp_web    the platform's browser machinery, with the account's own profile
        no account → None, and the router uses the platform's adapter from settings
        (WHATSAPP_CLOUD_*, SMTP_*, WHATSAPP_WEB_*), else the log channel.

A company that has an account is never sent for with the platform's credentials: an account
that cannot be used (secrets that do not open, a missing token or sender) fails its sends with
the reason instead. Accounts are read again every CHANNEL_ACCOUNTS_REFRESH_SECONDS per company
and channel, and at once after a send through one fails (`forget`), so a new token or sender
is picked up within seconds. Hosts a company names (SMTP server, Graph base URL) must resolve
to public addresses unless CHANNEL_ACCOUNTS_ALLOW_PRIVATE_HOSTS is set, so an account cannot
make dispatch connect inside the platform's network. Nothing here logs or returns a secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.headerregistry import Address
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import structlog
from pydantic import SecretStr

from shvya_common.channel_accounts import Account, default_account, web_profile
from shvya_common.crypto import SecretBox, SecretsError
from shvya_common.errors import PermanentError, RetryableError
from shvya_dispatch.channels.base import Channel
from shvya_dispatch.channels.email import EmailChannel, EmailStore
from shvya_dispatch.channels.graph_api import GraphApi
from shvya_dispatch.channels.whatsapp_cloud import WhatsAppCloudChannel
from shvya_dispatch.settings import DispatchSettings
from shvya_dispatch.templates import TemplateRenderer

log = structlog.get_logger(__name__)

ACCOUNT_CHANNELS = frozenset({"whatsapp_cloud", "email", "whatsapp_web"})
_CACHE_MAX = 10_000


def graph_fingerprint(phone_number_id: str, token: str) -> str:
    """The fingerprint a credential-bound pause records (the same for platform and accounts)."""
    return hashlib.sha256(f"{phone_number_id}:{token}".encode()).hexdigest()[:16]


def account_graph(
    settings: DispatchSettings,
    client: httpx.AsyncClient,
    account: Account,
    hosts: HostGuard | None = None,
) -> GraphApi:
    """Graph with a WhatsApp Cloud account's token, version and base URL (settings' defaults);
    every URL it requests passes `hosts` (public hosts only, unless settings allow others)."""
    token = account.secrets.get("access_token")
    if not token:
        raise PermanentError(
            f"the company's WhatsApp Cloud account {account.name!r} has no access_token"
        )
    version = str(account.config.get("api_version") or settings.whatsapp_cloud_api_version)
    return GraphApi(
        client,
        token=SecretStr(token),
        base_url=str(account.config.get("base_url") or settings.whatsapp_cloud_base_url),
        api_version=version if version.startswith("v") else f"v{version}",
        block_pause_seconds=settings.whatsapp_cloud_block_pause_seconds,
        account_pause_seconds=settings.whatsapp_cloud_account_pause_seconds,
        check_url=(hosts or HostGuard(settings.channel_accounts_allow_private_hosts)).check_url,
    )


class AccountDirectory:
    """Each company's default account per channel, read from the database and kept briefly."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        box: SecretBox | None,
        refresh_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.box = box
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._cache: dict[tuple[uuid.UUID, str], tuple[float, Account | None]] = {}

    async def default(self, company_id: uuid.UUID, channel: str) -> Account | None:
        """The company's account on `channel`, or None; raises RetryableError when it exists
        but its secrets do not open (SECRETS_KEYS unset or lacking its key)."""
        key = (company_id, channel)
        now = self.clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            account = await default_account(self.pool, self.box, company_id, channel)
        except (LookupError, SecretsError) as err:
            raise RetryableError(
                f"the company's {channel} channel account cannot be opened: {err}"
            ) from err
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = (now + self.refresh_seconds, account)
        return account

    def forget(self, company_id: uuid.UUID, channel: str) -> None:
        """Read the account again on its next use (after a failed send, say)."""
        self._cache.pop((company_id, channel), None)


@dataclass(frozen=True)
class AccountAdapter:
    """An adapter that sends as one company's account."""

    account_id: uuid.UUID
    channel: Channel


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


class HostGuard:
    """Refuses hosts that resolve to loopback, private, link-local or other non-public
    addresses; answers are kept for `ttl` seconds."""

    def __init__(self, allow_private: bool, ttl: float = 30.0) -> None:
        self.allow_private = allow_private
        self.ttl = ttl
        self._checked: dict[str, float] = {}

    async def check_url(self, url: str) -> None:
        """Refuse a URL whose host is not public (Graph URLs of a company's account)."""
        await self.check(urlsplit(url).hostname or "", "Graph URL host")

    async def check(self, host: str, what: str) -> None:
        if self.allow_private:
            return
        now = time.monotonic()
        if self._checked.get(host, 0.0) > now:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except OSError as err:
            raise RetryableError(f"{what} {host!r} does not resolve: {err}") from err
        addresses = {str(info[4][0]) for info in infos}
        if not addresses or not all(_is_public(a) for a in addresses):
            raise PermanentError(
                f"{what} {host!r} is not a public address; a company's account may name only"
                " public hosts (CHANNEL_ACCOUNTS_ALLOW_PRIVATE_HOSTS=true allows others)"
            )
        if len(self._checked) >= _CACHE_MAX:
            self._checked.clear()
        self._checked[host] = now + self.ttl


class CompanyChannels:
    """Per company and channel: the adapter of its account, its credential fingerprint, its
    WhatsApp Web profile and its Graph client."""

    def __init__(
        self,
        settings: DispatchSettings,
        directory: AccountDirectory,
        client: httpx.AsyncClient,
        templates: TemplateRenderer,
        email_store: EmailStore,
        *,
        web: Channel | None = None,
        platform_fingerprints: Mapping[str, str | None] | None = None,
        platform_graph: GraphApi | None = None,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.client = client
        self.templates = templates
        self.email_store = email_store
        self.web = web
        self.platform_fingerprints = dict(platform_fingerprints or {})
        self.platform_graph = platform_graph
        self.hosts = HostGuard(settings.channel_accounts_allow_private_hosts)
        self._adapters: dict[uuid.UUID, tuple[str, Channel | None]] = {}

    def forget(self, company_id: uuid.UUID, channel: str) -> None:
        self.directory.forget(company_id, channel)

    async def adapter(self, channel: str, company_id: uuid.UUID) -> AccountAdapter | None:
        """The adapter of the company's account on `channel`; None without an account (or,
        for email, with neither its own SMTP server nor the platform's relay)."""
        if channel not in ACCOUNT_CHANNELS:
            return None
        account = await self.directory.default(company_id, channel)
        if account is None:
            return None
        await self._check_hosts(account)
        version = account.version()
        cached = self._adapters.get(account.id)
        if cached is None or cached[0] != version:
            if len(self._adapters) >= _CACHE_MAX:
                self._adapters.clear()
            cached = (version, self._build(account))
            self._adapters[account.id] = cached
            log.info("channel_account_loaded", channel=channel, account_id=str(account.id))
        adapter = cached[1]
        return AccountAdapter(account.id, adapter) if adapter is not None else None

    async def fingerprint(self, company_id: uuid.UUID, channel: str) -> str | None:
        """A one-way mark of the credentials the company sends with on `channel` now."""
        account = (
            await self.directory.default(company_id, channel)
            if channel in ACCOUNT_CHANNELS
            else None
        )
        if account is None:
            return self.platform_fingerprints.get(channel)
        if channel == "whatsapp_cloud":
            return graph_fingerprint(
                str(account.config.get("phone_number_id") or ""),
                account.secrets.get("access_token", ""),
            )
        return account.fingerprint()

    async def web_profile(self, company_id: uuid.UUID) -> str:
        """The WhatsApp Web profile that sends for the company (and its pacing key)."""
        account = await self.directory.default(company_id, "whatsapp_web")
        if account is None:
            return self.settings.whatsapp_web_account_for(company_id)
        return web_profile(account.id)

    async def graph(self, company_id: uuid.UUID) -> GraphApi | None:
        """Graph with the company's own token, else the platform's (None: neither)."""
        account = await self.directory.default(company_id, "whatsapp_cloud")
        if account is None:
            return self.platform_graph
        await self._check_hosts(account)
        return self._graph(account)

    async def _check_hosts(self, account: Account) -> None:
        if account.channel == "email" and account.config.get("smtp_host"):
            await self.hosts.check(str(account.config["smtp_host"]), "SMTP server")
        if account.channel == "whatsapp_cloud" and account.config.get("base_url"):
            host = urlsplit(str(account.config["base_url"])).hostname or ""
            await self.hosts.check(host, "Graph base URL")

    def _graph(self, account: Account) -> GraphApi:
        return account_graph(self.settings, self.client, account, self.hosts)

    def _build(self, account: Account) -> Channel | None:
        if account.channel == "whatsapp_cloud":
            phone_number_id = account.config.get("phone_number_id")
            if not phone_number_id:
                raise PermanentError(
                    f"the company's WhatsApp Cloud account {account.name!r} has no phone_number_id"
                )
            channel = WhatsAppCloudChannel(
                self._graph(account), phone_number_id=str(phone_number_id), templates=self.templates
            )
            return channel
        if account.channel == "email":
            settings = self._email_settings(account)
            if settings is None:
                return None
            reply_to = account.config.get("reply_to")
            return EmailChannel(
                settings,
                self.email_store,
                self.directory.box,
                reply_to=str(reply_to) if reply_to else None,
            )
        return self.web

    def _email_settings(self, account: Account) -> DispatchSettings | None:
        """The platform's settings with the account's SMTP server and sender in place."""
        config: dict[str, Any] = account.config
        sender = config.get("from_address")
        if not sender:
            raise PermanentError(
                f"the company's email account {account.name!r} has no from_address"
            )
        update: dict[str, Any] = {
            "smtp_from": str(sender),
            "smtp_from_name": config.get("from_name"),
            # Message-IDs and EHLO carry the company's own domain.
            "smtp_message_id_domain": Address(addr_spec=str(sender)).domain,
        }
        if config.get("smtp_host"):
            password = account.secrets.get("smtp_password")
            if config.get("smtp_user") and not password:
                raise PermanentError(
                    f"the company's email account {account.name!r} names smtp_user but has no"
                    " smtp_password"
                )
            update.update(
                smtp_host=str(config["smtp_host"]),
                smtp_port=config.get("smtp_port"),
                smtp_security=config.get("smtp_security") or "starttls",
                smtp_user=config.get("smtp_user"),
                smtp_password=SecretStr(password) if password else None,
                # The platform's private CA is not the company's server's.
                smtp_ca_file=None,
            )
        elif not self.settings.smtp_host:
            return None  # no relay to share: the router records the send on the log channel
        else:
            self._check_relay_sender(account, update["smtp_message_id_domain"])
        return self.settings.model_copy(update=update)

    def _check_relay_sender(self, account: Account, domain: str) -> None:
        """The platform's relay sends From a company's domain only where the operator allowed
        it: otherwise any company could send as anyone through the platform's reputation."""
        allowed = [d.lower().strip(".") for d in self.settings.smtp_relay_domains]
        if self.settings.smtp_from:
            allowed.append(Address(addr_spec=self.settings.smtp_from).domain.lower())
        domain = domain.lower()
        if "*" in allowed or any(domain == d or domain.endswith(f".{d}") for d in allowed):
            return
        raise PermanentError(
            f"the company's email account {account.name!r} sends From {domain} through the"
            " platform's relay, which sends only for SMTP_FROM's domain and SMTP_RELAY_DOMAINS;"
            " the operator adds the domain once the relay may send for it"
        )
