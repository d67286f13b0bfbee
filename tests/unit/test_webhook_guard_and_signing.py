"""Outbound webhooks without servers: the SSRF guard's address policy and resolution, signing
secrets, Standard Webhooks signatures (checked with the `standardwebhooks` package), the body's
shape, the task's parameters and its retry schedule."""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shvya_common.bus import RetryPolicy
from shvya_common.contracts import TASKS, WebhookParams
from shvya_common.contracts.events import PUBLIC_EVENTS, EventType
from shvya_common.contracts.webhooks import webhook_body
from shvya_common.webhooks.keys import check_secret, new_secret
from shvya_common.webhooks.netguard import (
    AddressRefused,
    check_address,
    embedded_ipv4,
    refusal,
    resolve_public,
)
from shvya_dispatch.webhooks import RETRY, sign
from tests.fakes.dns import FakeDNS


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("0.0.0.0", "0.0.0.0/8"),
        ("0.1.2.3", "0.0.0.0/8"),
        ("255.255.255.255", "reserved"),
        ("224.0.0.251", "multicast"),
        ("192.0.2.10", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "scoped"),
        ("fd12:3456:789a::1", "unique local"),
        ("fc00::1", "unique local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "carrying 127.0.0.1, a loopback"),
        ("::ffff:10.0.0.1", "carrying 10.0.0.1, a private"),
        ("::ffff:169.254.169.254", "carrying 169.254.169.254, a link-local"),
        ("64:ff9b::7f00:1", "carrying 127.0.0.1, a loopback"),
        ("64:ff9b::a9fe:a9fe", "carrying 169.254.169.254"),
        ("64:ff9b::c0a8:1", "carrying 192.168.0.1, a private"),
        ("64:ff9b:1::a00:1", "local-use NAT64"),
        ("2002:7f00:1::1", "carrying 127.0.0.1, a loopback"),
        ("2002:a9fe:a9fe::1", "carrying 169.254.169.254"),
        ("2002:c0a8:101::1", "carrying 192.168.1.1, a private"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("2001:db8::1", "documentation"),
    ],
)
def test_the_guard_refuses_every_non_public_address(address: str, words: str) -> None:
    """Loopback, private, link-local, CGNAT, 0.0.0.0 and the metadata address are refused,
    also when wrapped in IPv4-mapped, NAT64 or 6to4 IPv6, and IPv6's own local ranges too."""
    why = refusal(ipaddress.ip_address(address))
    assert why is not None and words in why
    with pytest.raises(AddressRefused, match=re.escape(words.split(",")[0])):
        check_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_the_guard_allows_public_unicast_addresses(address: str) -> None:
    """Public IPv4 and IPv6 addresses pass, as do translations of a public IPv4 address."""
    assert refusal(ipaddress.ip_address(address)) is None
    check_address(address)


def test_the_ipv4_inside_an_ipv6_address_is_found() -> None:
    """IPv4-mapped, NAT64 and 6to4 addresses name the IPv4 address they lead to."""
    v6 = ipaddress.IPv6Address
    assert embedded_ipv4(v6("::ffff:1.2.3.4")) == ipaddress.IPv4Address("1.2.3.4")
    assert embedded_ipv4(v6("64:ff9b::102:304")) == ipaddress.IPv4Address("1.2.3.4")
    assert embedded_ipv4(v6("2002:102:304::9")) == ipaddress.IPv4Address("1.2.3.4")
    assert embedded_ipv4(v6("2606:4700::1")) is None


@pytest.fixture
async def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    return FakeDNS().install(monkeypatch)


async def test_a_name_is_refused_when_any_of_its_addresses_is_not_public(dns: FakeDNS) -> None:
    """Every resolved address is checked: one private answer among public ones refuses the
    host, an unresolvable name is refused, and a public host's addresses are returned."""
    dns.table["mixed.example"] = ["93.184.216.34", "10.0.0.7"]
    dns.table["public.example"] = ["93.184.216.34", "2606:2800:220:1::248"]
    dns.table["metadata.example"] = ["169.254.169.254"]
    with pytest.raises(AddressRefused, match=r"mixed.example resolves to 10.0.0.7, a private"):
        await resolve_public("mixed.example", 443)
    with pytest.raises(AddressRefused, match="link-local"):
        await resolve_public("metadata.example", 80)
    with pytest.raises(AddressRefused, match=r"cannot resolve nowhere\.example"):
        await resolve_public("nowhere.example", 443)
    found = await resolve_public("public.example", 443)
    assert [str(a) for a in found] == ["93.184.216.34", "2606:2800:220:1::248"]
    assert [str(a) for a in await resolve_public("mixed.example", 443, allow_private=True)] == [
        "93.184.216.34",
        "10.0.0.7",
    ]
    with pytest.raises(AddressRefused, match="loopback"):
        await resolve_public("[::1]", 443)


def test_secrets_are_whsec_base64_and_the_library_accepts_them() -> None:
    """A new secret is whsec_ + base64 of 32 bytes; malformed ones are refused with a reason."""
    secret = new_secret()
    assert secret.startswith("whsec_") and check_secret(secret) == secret
    Webhook(secret)
    for bad, reason in [
        ("hunter2", "starts with 'whsec_'"),
        ("whsec_not base64!", "base64"),
        ("whsec_c2hvcnQ=", "24 to 64 bytes"),
    ]:
        with pytest.raises(ValueError, match=reason):
            check_secret(bad)


def test_signatures_verify_with_standardwebhooks_one_per_secret() -> None:
    """The webhook-signature header holds one v1 signature per secret, and a receiver with any
    one of the secrets verifies the delivery; a tampered body or a third secret does not."""
    old, new = new_secret(), new_secret()
    now = datetime.now(UTC)
    body = webhook_body("lead.created", now, uuid.uuid4(), None, {"name": "Asha"})
    msg_id = str(uuid.uuid4())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sign(msg_id, now, body, [new, old]),
    }
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(s.startswith("v1,") for s in headers["webhook-signature"].split(" "))
    assert Webhook(new).verify(body, headers)["data"]["name"] == "Asha"
    assert Webhook(old).verify(body.encode(), headers)["type"] == "lead.created"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body.replace("Asha", "Eve"), headers)


def test_the_body_is_the_standard_shape_and_the_same_bytes_every_time() -> None:
    """type, timestamp and data (the payload with company and lead), serialised identically on
    each attempt so every retry carries the same body."""
    company, lead = uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 5, 4, 9, 45, 0, 123456, tzinfo=UTC)
    first = webhook_body("reminder.due", at, company, lead, {"title": "Call", "n": 1})
    assert first == webhook_body("reminder.due", at, company, lead, {"n": 1, "title": "Call"})
    parsed = json.loads(first)
    assert parsed == {
        "type": "reminder.due",
        "timestamp": "2026-05-04T09:45:00.123456Z",
        "data": {"title": "Call", "n": 1, "company_id": str(company), "lead_id": str(lead)},
    }


def test_the_task_contract_and_its_parameters() -> None:
    """webhook.reminder is dispatch's P2 50 task; its parameters name the row of their kind."""
    spec = TASKS["webhook.reminder"]
    assert (spec.priority, spec.service, spec.params) == (50, "dispatch", WebhookParams)
    WebhookParams(kind="delivery", delivery_id=uuid.uuid4())
    WebhookParams(kind="reminder", reminder_id=uuid.uuid4(), version=3)
    with pytest.raises(ValidationError, match="names its delivery_id"):
        WebhookParams(kind="delivery", reminder_id=uuid.uuid4())
    with pytest.raises(ValidationError, match="names its reminder_id"):
        WebhookParams(kind="reminder")
    assert {EventType.REMINDER_DUE, EventType.WEBHOOK_ENDPOINT_DISABLED} <= PUBLIC_EVENTS


def test_deliveries_retry_with_backoff_and_jitter_over_about_a_day() -> None:
    """Eight attempts whose delays grow and add up to about a day, each varied by ±20 %; a
    jitter outside [0, 1) is refused."""
    delays = list(RETRY.schedule or ())
    assert len(delays) == 7 and delays == sorted(delays)
    assert 20 * 3600 <= sum(delays) <= 30 * 3600
    assert RETRY.jitter == 0.2
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)
