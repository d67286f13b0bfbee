"""Channel accounts without servers: how long dispatch trusts a resolved account, what the router
does when an account's send fails, which hosts a company may name, config checks, and that an
opened account never prints its secrets."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from shvya_common.channel_accounts import Account, check_config, seal_secrets
from shvya_common.contracts import SendParams
from shvya_common.crypto import SecretBox, generate_key
from shvya_common.errors import PermanentError, RetryableError
from shvya_dispatch.accounts import AccountDirectory, HostGuard, account_graph
from shvya_dispatch.channels import ChannelRouter, SendResult
from shvya_dispatch.settings import DispatchSettings

BOX = SecretBox.from_setting(f"k1:{generate_key()}")
COMPANY = uuid.uuid4()


class FakePool:
    """Answers `default_account`'s one query with a row sealed under `box`."""

    def __init__(self, box: SecretBox, token: str = "EAAG-unit-token") -> None:
        self.id = uuid.uuid4()
        self.secrets = seal_secrets(box, self.id, {"access_token": token})
        self.reads = 0

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any]:
        self.reads += 1
        return {
            "id": self.id,
            "company_id": args[0],
            "channel": args[1],
            "name": "main",
            "address": "1055",
            "config": {"phone_number_id": "1055"},
            "secrets": self.secrets,
        }


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_directory_reads_an_account_again_only_after_its_refresh_time_or_a_forget():
    """A resolved account is reused for the refresh time, read again after it, and read again
    at once after `forget` (what the router does when a send through it fails)."""
    pool, clock = FakePool(BOX), Clock()
    directory = AccountDirectory(pool, BOX, refresh_seconds=30, clock=clock)  # type: ignore[arg-type]
    first = await directory.default(COMPANY, "whatsapp_cloud")
    assert first is not None and first.secrets == {"access_token": "EAAG-unit-token"}
    clock.now += 29
    await directory.default(COMPANY, "whatsapp_cloud")
    assert pool.reads == 1
    clock.now += 2
    await directory.default(COMPANY, "whatsapp_cloud")
    assert pool.reads == 2
    directory.forget(COMPANY, "whatsapp_cloud")
    await directory.default(COMPANY, "whatsapp_cloud")
    assert pool.reads == 3


async def test_an_account_whose_secrets_do_not_open_is_retryable_with_the_reason():
    """Secrets sealed under a key the keyring lacks (or no keyring at all) fail the send as
    retryable, naming the cause and never the secret."""
    other = SecretBox.from_setting(f"k2:{generate_key()}")
    for box in (other, None):
        directory = AccountDirectory(FakePool(BOX), box)  # type: ignore[arg-type]
        with pytest.raises(RetryableError, match="cannot be opened") as caught:
            await directory.default(COMPANY, "whatsapp_cloud")
        assert "EAAG-unit-token" not in str(caught.value)


def test_an_opened_account_never_shows_its_secrets():
    """repr() of an account lists the names of its secrets, not their values."""
    account = Account(
        uuid.uuid4(), COMPANY, "email", "main", None, {}, {"smtp_password": "hunter2-pw"}
    )
    assert "hunter2-pw" not in repr(account) and "smtp_password" in repr(account)
    assert "hunter2-pw" not in account.fingerprint()


@dataclass
class FakeChannel:
    name: str = "whatsapp_cloud"
    fail: Exception | None = None
    sent: list[str] = field(default_factory=list)

    async def send(self, to: str, text: str, **kwargs: Any) -> SendResult:
        if self.fail is not None:
            raise self.fail
        self.sent.append(to)
        return SendResult("wamid.1")


@dataclass
class FakeAccounts:
    own: FakeChannel | None
    forgotten: list[tuple[uuid.UUID, str]] = field(default_factory=list)

    async def adapter(self, channel: str, company_id: uuid.UUID) -> Any:
        if self.own is None:
            return None

        @dataclass
        class Own:
            account_id: uuid.UUID
            channel: FakeChannel

        return Own(uuid.UUID(int=7), self.own)

    def forget(self, company_id: uuid.UUID, channel: str) -> None:
        self.forgotten.append((company_id, channel))


def _params() -> SendParams:
    return SendParams(
        company_id=COMPANY,
        lead_id=uuid.uuid4(),
        channel="whatsapp_cloud",
        to="+15551230001",
        text="hi",  # type: ignore[arg-type]
        send_key="k",
    )


async def test_router_prefers_the_companys_account_and_rereads_it_after_a_failure():
    """A company with an account sends through it (its id in the meta), never the platform's
    adapter; a failure through it makes the account be read again."""
    own, platform = FakeChannel(), FakeChannel()
    accounts = FakeAccounts(own)
    router = ChannelRouter({"whatsapp_cloud": platform}, None, "fail", accounts)
    result = await router.send(
        "+15551230001", "hi", "whatsapp_cloud", message_id=uuid.uuid4(), params=_params()
    )
    assert result.meta["channel_account"] == str(uuid.UUID(int=7))
    assert own.sent and not platform.sent
    own.fail = PermanentError("token refused")
    with pytest.raises(PermanentError):
        await router.send(
            "+15551230001", "hi", "whatsapp_cloud", message_id=uuid.uuid4(), params=_params()
        )
    assert accounts.forgotten == [(COMPANY, "whatsapp_cloud")]
    assert not platform.sent


async def test_router_falls_back_to_the_platform_without_an_account():
    """Without an account the platform's adapter sends, as before channel accounts."""
    platform = FakeChannel()
    router = ChannelRouter({"whatsapp_cloud": platform}, None, "fail", FakeAccounts(None))
    await router.send(
        "+15551230001", "hi", "whatsapp_cloud", message_id=uuid.uuid4(), params=_params()
    )
    assert platform.sent == ["+15551230001"]


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "10.1.2.3", "192.168.0.9", "169.254.169.254", "::1", "::ffff:127.0.0.1"]
)
async def test_a_company_may_not_name_a_private_host(host):
    """Loopback, private, link-local (cloud metadata) and IPv4-mapped forms are refused."""
    with pytest.raises(PermanentError, match="not a public address"):
        await HostGuard(allow_private=False).check(host, "SMTP server")


async def test_public_hosts_pass_and_the_setting_allows_private_ones():
    """A public address passes; CHANNEL_ACCOUNTS_ALLOW_PRIVATE_HOSTS lets any host through."""
    await HostGuard(allow_private=False).check("8.8.8.8", "SMTP server")
    await HostGuard(allow_private=True).check("127.0.0.1", "SMTP server")


def test_config_values_are_checked_by_form():
    """Ports, security modes, ids and addresses of the wrong form are refused, each named."""
    check_config("email", {"smtp_port": 587, "smtp_security": "tls", "from_address": "a@b.example"})
    check_config("whatsapp_cloud", {"phone_number_id": "1055", "api_version": "v23.0"})
    with pytest.raises(ValueError, match="smtp_port") as caught:
        check_config("email", {"smtp_port": 70000, "smtp_security": "ssl"})
    assert "smtp_security" in str(caught.value)
    with pytest.raises(ValueError, match="phone_number_id"):
        check_config("whatsapp_cloud", {"phone_number_id": "+1 555"})
    with pytest.raises(ValueError, match="base_url"):
        check_config("whatsapp_cloud", {"base_url": "file:///etc/passwd"})


async def test_a_companys_graph_never_calls_a_private_host():
    """Graph built from a company's account refuses a base URL (or a media or paging URL its
    Graph answers) on a private address before sending the token anywhere."""
    account = Account(
        uuid.uuid4(),
        COMPANY,
        "whatsapp_cloud",
        "main",
        "1055",
        {"phone_number_id": "1055", "base_url": "http://169.254.169.254"},
        {"access_token": "EAAG-never-sent"},
    )
    settings = DispatchSettings(_env_file=None)  # type: ignore[call-arg]
    async with httpx.AsyncClient(transport=httpx.MockTransport(_no_request)) as client:
        graph = account_graph(settings, client, account)
        with pytest.raises(PermanentError, match="not a public address"):
            await graph.post("1055/messages", {"type": "text"})
        with pytest.raises(PermanentError, match="not a public address"):
            await graph.download("http://10.0.0.5/file", 1024)


def _no_request(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"requested {request.url}")
