"""Which company owns each change of a WhatsApp Cloud notification, and which app secret must
have signed it.

Meta signs a notification (`X-Hub-Signature-256`) with the secret of the Meta app the business
number is subscribed through. Each change names its business number (`metadata.phone_number_id`)
or, for template and account notifications, only its WhatsApp Business Account (the entry's
`id`). A number belongs, in this order, to:

1. the company whose WhatsApp Cloud channel account has that `phone_number_id`, signed with the
   account's `app_secret`, else WHATSAPP_APP_SECRET;
2. the company of an `inbound_routes` row for the number (an operator's, from before channel
   accounts), signed with WHATSAPP_APP_SECRET;
3. the platform's own number (WHATSAPP_CLOUD_PHONE_ID): the default company, signed with
   WHATSAPP_APP_SECRET. The API refuses that number to every other company's account.

A WABA likewise belongs to the platform (WHATSAPP_CLOUD_WABA_ID, or a `whatsapp_cloud_waba`
route), and to the companies whose accounts name it as their `waba_id`. Anything else belongs
to no one.

`split` finds the one candidate secret that signed the body. The changes owned under that
secret are kept, with their companies; every other change is skipped and recorded (an event
with no company, `whatsapp.entry_skipped`, a log line, and `shvya_webhook_items_total` with
outcome `unrouted` or `unverified`), never filed into some company. A body none of the
candidates signed is refused (403) with nothing written; one whose owners have no secret at all
answers 503, so that Meta retries once the secret is set. Owners are cached for
`OWNER_CACHE_SECONDS`; secrets are never logged or returned.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import structlog

from shvya_common.channel_accounts import account_at, accounts_with_waba
from shvya_common.contracts.events import EventType
from shvya_common.crypto import SecretBox, SecretsError
from shvya_common.events import record_event
from shvya_common.metrics import WEBHOOK_ITEMS
from shvya_common.whatsapp.templates import WABA_ROUTE_CHANNEL
from shvya_ingest.settings import IngestSettings

log = structlog.get_logger(__name__)

CHANNEL = "whatsapp_cloud"
OWNER_CACHE_SECONDS = 30.0
_CACHE_MAX = 10_000


def signature_matches(secret: bytes, body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().lower().encode())


@dataclass(frozen=True)
class Owner:
    """Who owns a number or WABA: a company (None: the default company) and the secret that
    signs its webhooks (None: none is set)."""

    company_id: uuid.UUID | None
    secret: bytes | None = field(repr=False)
    source: Literal["platform", "account", "route"]


class SignatureRefused(Exception):
    """The answer to give instead of handling the notification."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Routed:
    """The part of a notification to handle, and whose it is."""

    payload: dict[str, Any]
    numbers: dict[str, uuid.UUID | None] = field(default_factory=dict)
    wabas: dict[str, list[uuid.UUID | None]] = field(default_factory=dict)
    # (where, field, why, messages, statuses) of each change skipped.
    skipped: list[dict[str, Any]] = field(default_factory=list)


class Owners:
    """Resolves owners from settings, channel accounts and routes, caching each briefly."""

    def __init__(self, settings: IngestSettings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.box: SecretBox | None = settings.secret_box()
        secret = settings.whatsapp_app_secret
        self.platform_secret = secret.get_secret_value().encode() if secret else None
        self._numbers: dict[str, tuple[float, Owner | None]] = {}
        self._wabas: dict[str, tuple[float, list[Owner]]] = {}

    def forget(self) -> None:
        """Drop cached owners (an account changed through this process takes effect at once)."""
        self._numbers.clear()
        self._wabas.clear()

    def _fresh(self, cache: dict[str, tuple[float, Any]], key: str) -> tuple[bool, Any]:
        hit = cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def _keep(self, cache: dict[str, tuple[float, Any]], key: str, value: Any) -> None:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[key] = (time.monotonic() + OWNER_CACHE_SECONDS, value)

    def _account_secret(self, secrets: dict[str, str]) -> bytes | None:
        own = secrets.get("app_secret")
        return own.encode() if own else self.platform_secret

    async def of_number(self, number: str) -> Owner | None:
        hit, cached = self._fresh(self._numbers, number)
        if hit:
            return cached  # type: ignore[no-any-return]
        owner: Owner | None = None
        try:
            account = await account_at(self.pool, self.box, CHANNEL, number)
        except (LookupError, SecretsError) as err:
            # The account's secrets cannot be opened: it cannot verify anything, and no other
            # secret may stand in for its own.
            log.warning("whatsapp_account_unreadable", phone_number_id=number, error=str(err))
            owner = Owner(None, None, "account")
            account = None
        if account is not None:
            owner = Owner(account.company_id, self._account_secret(account.secrets), "account")
        elif owner is None:
            company_id = await self.pool.fetchval(
                "SELECT company_id FROM inbound_routes WHERE channel = $1 AND address = $2",
                CHANNEL,
                number,
            )
            if company_id is not None:
                owner = Owner(company_id, self.platform_secret, "route")
            elif number == self.settings.whatsapp_cloud_phone_id:
                owner = Owner(None, self.platform_secret, "platform")
        self._keep(self._numbers, number, owner)
        return owner

    async def of_waba(self, waba_id: str) -> list[Owner]:
        hit, cached = self._fresh(self._wabas, waba_id)
        if hit:
            return cached  # type: ignore[no-any-return]
        owners: list[Owner] = []
        routed = await self.pool.fetch(
            "SELECT company_id FROM inbound_routes WHERE channel = $1 AND address = $2",
            WABA_ROUTE_CHANNEL,
            waba_id,
        )
        owners += [Owner(r["company_id"], self.platform_secret, "route") for r in routed]
        if not routed and waba_id == self.settings.whatsapp_cloud_waba_id:
            owners.append(Owner(None, self.platform_secret, "platform"))
        try:
            accounts = await accounts_with_waba(self.pool, self.box, waba_id)
        except (LookupError, SecretsError) as err:
            log.warning("whatsapp_account_unreadable", waba_id=waba_id, error=str(err))
            accounts = []
        owners += [
            Owner(a.company_id, self._account_secret(a.secrets), "account") for a in accounts
        ]
        self._keep(self._wabas, waba_id, owners)
        return owners


@dataclass
class _Change:
    entry: int
    change: Any
    number: str | None
    waba_id: str | None
    owners: list[Owner]


def _changes(payload: dict[str, Any]) -> Iterable[tuple[int, Any, str | None, str | None]]:
    entries = payload.get("entry")
    for n, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            yield n, entry, None, None
            continue
        waba_id = str(entry["id"]) if entry.get("id") is not None else None
        changes = entry.get("changes")
        for change in changes if isinstance(changes, list) else []:
            value = change.get("value") if isinstance(change, dict) else None
            metadata = value.get("metadata") if isinstance(value, dict) else None
            number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            yield n, change, str(number) if number else None, waba_id


def _counts(change: Any) -> dict[str, Any]:
    value = change.get("value") if isinstance(change, dict) else None
    value = value if isinstance(value, dict) else {}
    messages, statuses = value.get("messages"), value.get("statuses")
    return {
        "field": str(change.get("field") or "messages") if isinstance(change, dict) else None,
        "messages": len(messages) if isinstance(messages, list) else 0,
        "statuses": len(statuses) if isinstance(statuses, list) else 0,
    }


async def split(owners: Owners, payload: dict[str, Any], body: bytes, header: str) -> Routed:
    """The changes of `payload` that the signature proves, with their companies; raises
    SignatureRefused when no candidate secret signed `body`."""
    changes: list[_Change] = []
    for entry, change, number, waba_id in _changes(payload):
        if number is not None:
            found = await owners.of_number(number)
            owned = [found] if found is not None else []
        elif waba_id is not None:
            owned = await owners.of_waba(waba_id)
        else:
            owned = []
        changes.append(_Change(entry, change, number, waba_id, owned))
    candidates: list[bytes] = []
    for c in changes:
        for o in c.owners:
            if o.secret is not None and o.secret not in candidates:
                candidates.append(o.secret)
    if any(not c.owners for c in changes) or not changes:
        # Unowned changes are recorded, which needs a body the platform's secret signed.
        if owners.platform_secret is not None and owners.platform_secret not in candidates:
            candidates.append(owners.platform_secret)
    if not candidates:
        owned_numbers = sorted({c.number or c.waba_id or "" for c in changes if c.owners})
        if owned_numbers:
            raise SignatureRefused(
                503,
                "no app secret to verify this notification for "
                f"{', '.join(owned_numbers)}: set the channel account's app_secret or"
                " WHATSAPP_APP_SECRET",
            )
        unknown = sorted({c.number or c.waba_id or "?" for c in changes})
        log.warning("whatsapp_notification_unrouted", numbers=unknown[:20], verified=False)
        raise SignatureRefused(
            403, f"no company owns {', '.join(unknown[:20]) or 'this notification'}; nothing filed"
        )
    matched = next((s for s in candidates if signature_matches(s, body, header)), None)
    if matched is None:
        raise SignatureRefused(
            403,
            "X-Hub-Signature-256 does not match the body under the app secret of the account"
            " that owns it",
        )
    routed = Routed({k: v for k, v in payload.items() if k != "entry"})
    kept: dict[int, list[Any]] = {}
    entries = payload.get("entry")
    entry_list = entries if isinstance(entries, list) else []
    for c in changes:
        mine = [o for o in c.owners if o.secret == matched]
        if not mine:
            why = "unverified" if c.owners else "unrouted"
            routed.skipped.append(
                {"phone_number_id": c.number, "waba_id": c.waba_id, "reason": why}
                | _counts(c.change)
            )
            continue
        kept.setdefault(c.entry, []).append(c.change)
        if c.number is not None:
            routed.numbers[c.number] = mine[0].company_id
        elif c.waba_id is not None:
            routed.wabas[c.waba_id] = [o.company_id for o in mine]
    routed.payload["entry"] = [
        {**entry_list[n], "changes": kept_changes} for n, kept_changes in sorted(kept.items())
    ]
    return routed


async def record_skipped(pool: asyncpg.Pool, skipped: list[dict[str, Any]]) -> None:
    """Keep what was skipped: an event with no company (operators see it; no tenant does)."""
    if not skipped:
        return
    async with pool.acquire(timeout=5) as conn, conn.transaction():
        for item in skipped:
            WEBHOOK_ITEMS.labels(CHANNEL, str(item.get("field")), item["reason"]).inc()
            await record_event(conn, None, None, EventType.WHATSAPP_ENTRY_SKIPPED, item)
    log.warning(
        "whatsapp_changes_skipped",
        skipped=len(skipped),
        numbers=sorted({str(i["phone_number_id"] or i["waba_id"]) for i in skipped})[:20],
    )
