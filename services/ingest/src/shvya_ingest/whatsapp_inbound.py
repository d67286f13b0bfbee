"""What ingest does with one WhatsApp Cloud notification, item by item.

A delivery is never rejected because of one item in it. Messages are filed through the same path
as /inbound-message (one statement per company and identity; if that statement fails for a
reason that is not an outage, each message is filed on its own and the one that still fails is
recorded). Edits, deletions, reactions, identity changes, preferences and template events are
applied one by one, each in its own transaction; statuses are applied together and their
failures drive the status policy (if that transaction fails for a reason that is not an outage,
each status is applied on its own and the one that still fails is recorded). Whatever is not
acted on (unknown future kinds, webhook errors, account fields, objects that cannot be read,
items that failed) is kept as an event and counted in `shvya_webhook_items_total`; an event the
database will not store as it is is kept as text instead, and one that cannot be stored at all is
logged. The answer is 200 all the same. Only an outage of the database or the queue answers 503,
so that Meta retries the batch, which then changes nothing twice.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import structlog

from shvya_common.bus import Unit
from shvya_common.contracts import MediaFetchParams
from shvya_common.db import is_outage
from shvya_common.metrics import WEBHOOK_ITEMS
from shvya_common.whatsapp.templates import (
    apply_quality_update,
    apply_template_event,
    companies_for_account,
)
from shvya_ingest.api import OUTAGE_ERRORS, Ingest
from shvya_ingest.inbound import Accepted
from shvya_ingest.meta_items import (
    RAW_CHARS,
    Edit,
    IdentityChange,
    Inbound,
    Invalid,
    Item,
    PreferenceChange,
    Reaction,
    Recorded,
    Revoke,
    Sender,
    Status,
    TemplateEvent,
    Where,
    parse_notification,
)
from shvya_ingest.repository import CompanyRoute, Identity, InboundRow
from shvya_ingest.status_policy import StatusPolicyConfig, apply_failure_policy
from shvya_ingest.statuses import StatusOutcome, apply_statuses
from shvya_ingest.whatsapp_accounts import Routed
from shvya_ingest.whatsapp_repository import (
    Changed,
    FiledMessage,
    after_filing,
    answer_edit,
    apply_edit,
    apply_preference,
    apply_reaction,
    apply_revoke,
    change_identity,
    link_identities,
    record_event,
)

log = structlog.get_logger(__name__)

CHANNEL: Final = "whatsapp_cloud"
# When statuses are applied one by one: a message's later states first, so that a `failed`
# sent in the same delivery as its `delivered` or `read` finds the message as the batch would.
_STATUS_ORDER: Final = {"read": 0, "delivered": 1, "failed": 2, "sent": 3}


class Notification:
    """One notification being handled: its owners per business number, and the tally."""

    def __init__(self, ingest: Ingest, routed: Routed) -> None:
        self.ingest = ingest
        self.routed = routed
        self.pool = ingest.plat.pool
        self.counts: Counter[str] = Counter()
        # (company, event type, payload) of everything kept but not acted on.
        self.kept: list[tuple[uuid.UUID, str, dict[str, Any]]] = []

    def count(self, kind: str, outcome: str, n: int = 1) -> None:
        if n:
            WEBHOOK_ITEMS.labels(CHANNEL, kind, outcome).inc(n)
            self.counts[outcome] += n

    async def route(self, where: Where) -> CompanyRoute:
        """The company that owns the change (`whatsapp_accounts.split` kept only owned ones;
        None is the default company, owner of the platform's number)."""
        company_id = None
        if where.phone_number_id and where.phone_number_id in self.routed.numbers:
            company_id = self.routed.numbers[where.phone_number_id]
        elif where.waba_id and self.routed.wabas.get(where.waba_id):
            company_id = self.routed.wabas[where.waba_id][0]
        return await self.ingest.route_for(company_id)

    async def companies(self, conn: asyncpg.Connection, where: Where) -> list[uuid.UUID]:
        """The companies a template update applies to: those owning the number or WABA under
        the secret that signed it; the platform's are those its account routes to."""
        owners: list[uuid.UUID | None]
        if where.phone_number_id and where.phone_number_id in self.routed.numbers:
            owners = [self.routed.numbers[where.phone_number_id]]
        else:
            owners = list(self.routed.wabas.get(where.waba_id or "", []))
        found: list[uuid.UUID] = []
        for company_id in owners:
            if company_id is None:
                found += await companies_for_account(conn, where.waba_id, where.phone_number_id)
            else:
                found.append(company_id)
        return list(dict.fromkeys(found))

    def keep(self, route: CompanyRoute, kind: str, payload: dict[str, Any]) -> None:
        self.kept.append((route.company_id, kind, payload))

    async def handle(self, payload: dict[str, Any]) -> dict[str, object]:
        parsed = parse_notification(payload, datetime.now(UTC))
        await self._file_messages(parsed.of(Inbound))
        for item in parsed.items:
            if isinstance(item, Edit | Revoke | Reaction | IdentityChange | PreferenceChange):
                await self._one(item, self._apply_change)
            elif isinstance(item, TemplateEvent):
                await self._one(item, self._apply_template)
            elif isinstance(item, Recorded | Invalid):
                route = await self.route(item.where)
                outcome = "recorded" if isinstance(item, Recorded) else "invalid"
                self.count(item.kind, outcome)
                self.keep(
                    route,
                    f"whatsapp.item_{outcome}",
                    {"kind": item.kind, "reason": item.reason, "item": item.raw},
                )
        statuses = await self._apply_statuses(parsed.of(Status))
        await self._write_kept()
        summary = {
            "status": "ok",
            "messages": self.counts["filed"] + self.counts["optout"],
            "duplicates": self.counts["duplicate"],
            "optouts": self.counts["optout"],
            "statuses": statuses,
            "changes": self.counts["applied"],
            "skipped": self.counts["recorded"]
            + self.counts["invalid"]
            + self.counts["unmatched"]
            + len(self.routed.skipped),
            "failed": self.counts["failed"],
        }
        log.info("whatsapp_notification", **{k: v for k, v in summary.items() if k != "status"})
        return summary

    # --- messages ---

    async def _file_messages(self, items: list[Inbound]) -> None:
        by_company: dict[uuid.UUID, tuple[CompanyRoute, list[Inbound]]] = {}
        for item in items:
            route = await self.route(item.where)
            by_company.setdefault(route.company_id, (route, []))[1].append(item)
        for route, group in by_company.values():
            # Filing does not need the links: without them a person may keep two leads a while.
            senders = [i.sender for i in group]
            await self._guarded(
                route,
                "identities",
                functools.partial(_link_in, route=route, senders=senders),
            )
            filed: list[FiledMessage] = []
            identities: tuple[Identity, ...] = ("phone", "wa_user")
            for identity in identities:
                chosen = [i for i in group if (i.sender.phone is not None) == (identity == "phone")]
                if chosen:
                    filed += await self._file(route, identity, chosen)
            await self._after_filing(route, filed)

    async def _file(
        self, route: CompanyRoute, identity: Identity, items: list[Inbound]
    ) -> list[FiledMessage]:
        now = datetime.now(UTC)
        rows = [
            InboundRow(
                address=i.sender.address,
                text=i.text,
                contact_name=i.sender.name,
                provider_message_id=i.wamid,
                received_at=i.sent_at or now,
                meta=i.meta,
            )
            for i in items
        ]
        try:
            results = await self.ingest.inbound.file(
                route, identity=identity, channel=CHANNEL, rows=rows
            )
            pairs = list(zip(items, results, strict=True))
        except asyncpg.PostgresError as err:
            if is_outage(err):
                raise
            log.warning("whatsapp_batch_filing_failed", error=type(err).__name__, rows=len(rows))
            pairs = []
            for item, row in zip(items, rows, strict=True):
                try:
                    one = await self.ingest.inbound.file(
                        route, identity=identity, channel=CHANNEL, rows=[row]
                    )
                    pairs.append((item, one[0]))
                except asyncpg.PostgresError as single:
                    if is_outage(single):
                        raise
                    self._failed(route, item, single)
        return [self._counted(item, accepted) for item, accepted in pairs]

    def _counted(self, item: Inbound, accepted: Accepted) -> FiledMessage:
        outcome = "duplicate" if not accepted.created else "optout" if accepted.optout else "filed"
        self.count(f"message.{item.kind}", outcome)
        return FiledMessage(item, accepted.message_id, accepted.lead_id, accepted.created)

    def _failed(self, route: CompanyRoute, item: Item, err: BaseException) -> None:
        kind = type(item).__name__.lower()
        payload: dict[str, Any] = {"kind": kind, "reason": f"{type(err).__name__}: {err}"[:500]}
        if isinstance(item, Inbound):
            kind = f"message.{item.kind}"
            payload.update(
                kind=kind,
                wamid=item.wamid,
                address=item.sender.address,
                text=item.text,
                meta=item.meta,
            )
        elif isinstance(item, Status):
            report = item.report
            payload.update(
                wamid=report.provider_message_id[:300],
                status=report.status,
                status_at=report.status_at.isoformat(),
                recipient=report.recipient,
                errors=report.errors,
            )
        self.count(kind, "failed")
        self.keep(route, "whatsapp.item_failed", payload)
        log.warning("whatsapp_item_failed", kind=kind, error=type(err).__name__)

    async def _guarded(self, route: CompanyRoute, kind: str, step: Any) -> None:
        """Run `step(unit)` in its own unit of work; anything but an outage is recorded."""
        try:
            async with self.ingest.plat.bus.unit(acquire_timeout=5) as unit:
                await step(unit)
        except OUTAGE_ERRORS:
            raise
        except asyncpg.PostgresError as err:
            if is_outage(err):
                raise
            self._step_failed(route, kind, err)
        except Exception as err:  # a bug here must not cost the batch
            self._step_failed(route, kind, err)

    def _step_failed(self, route: CompanyRoute, kind: str, err: BaseException) -> None:
        self.count(kind, "failed")
        self.keep(
            route, "whatsapp.item_failed", {"kind": kind, "reason": f"{type(err).__name__}: {err}"}
        )
        log.warning("whatsapp_step_failed", kind=kind, error=type(err).__name__)

    async def _after_filing(self, route: CompanyRoute, filed: list[FiledMessage]) -> None:
        if filed:
            step = functools.partial(self._set_going, route=route, filed=filed)
            await self._guarded(route, "after_filing", step)

    async def _set_going(
        self, unit: Unit, *, route: CompanyRoute, filed: list[FiledMessage]
    ) -> None:
        for media in await after_filing(unit.conn, route.company_id, filed):
            await unit.enqueue_job(
                "media.fetch",
                MediaFetchParams(
                    media_row_id=media["id"],
                    company_id=route.company_id,
                    message_id=media["message_id"],
                ),
                f"media.fetch:{media['id']}",
                company_id=route.company_id,
            )

    # --- changes to what is already filed ---

    async def _one(self, item: Item, apply: Any) -> None:
        route = await self.route(item.where)
        try:
            async with self.ingest.plat.bus.unit(acquire_timeout=5) as unit:
                await apply(unit, route, item)
        except OUTAGE_ERRORS:
            raise
        except asyncpg.PostgresError as err:
            if is_outage(err):
                raise
            self._failed(route, item, err)
        except Exception as err:  # a bug in one item's handling must not cost the batch
            self._failed(route, item, err)

    async def _apply_change(self, unit: Unit, route: CompanyRoute, item: Item) -> None:
        conn = unit.conn
        company_id = route.company_id
        changed: Changed
        if isinstance(item, Edit):
            changed = await apply_edit(conn, company_id, item)
            kind, target = "edit", item.original_wamid
            await answer_edit(unit, company_id, changed)
        elif isinstance(item, Revoke):
            changed = await apply_revoke(conn, company_id, item)
            kind, target = "revoke", item.original_wamid
        elif isinstance(item, Reaction):
            changed = await apply_reaction(conn, company_id, item)
            kind, target = "reaction", item.target_wamid
        elif isinstance(item, IdentityChange):
            changed = await change_identity(conn, route, item)
            kind, target = item.kind, item.old_user_id or item.old_phone or ""
        else:
            assert isinstance(item, PreferenceChange)
            changed = await apply_preference(conn, company_id, item)
            kind, target = f"user_preferences.{item.value}", item.sender.address
        self.count(kind, changed.outcome)
        if changed.outcome == "unmatched":
            payload: dict[str, Any] = {"kind": kind, "target": target}
            if isinstance(item, Edit):
                payload["text"] = item.text  # the edited text is kept even without its original
            await record_event(conn, company_id, None, "whatsapp.item_unmatched", payload)

    async def _apply_template(self, unit: Unit, route: CompanyRoute, item: Item) -> None:
        conn = unit.conn
        assert isinstance(item, TemplateEvent)
        companies = await self.companies(conn, item.where)
        if item.field == "message_template_quality_update":
            n = await apply_quality_update(
                conn,
                companies,
                provider_template_id=item.template_id,
                name=item.name,
                language=item.language,
                quality=item.quality,
            )
        else:
            n = len(
                await apply_template_event(
                    conn,
                    companies,
                    provider_template_id=item.template_id,
                    name=item.name,
                    language=item.language,
                    event=item.event,
                    reason=item.reason,
                    category=item.category,
                )
            )
        self.count(item.field, "applied" if n else "unmatched")
        if not n:
            await record_event(
                conn,
                route.company_id,
                None,
                "whatsapp.item_unmatched",
                {
                    "kind": item.field,
                    "event": item.event,
                    "name": item.name,
                    "language": item.language,
                    "template_id": item.template_id,
                },
            )

    # --- statuses ---

    async def _apply_statuses(self, statuses: list[Status]) -> int:
        if not statuses:
            return 0
        config = StatusPolicyConfig.from_settings(self.ingest.settings)
        try:
            outcome, taken = await self._status_unit(config, statuses)
        except OUTAGE_ERRORS:
            raise
        except Exception as err:
            if isinstance(err, asyncpg.PostgresError) and is_outage(err):
                raise
            # One status the database or the policy refuses must not cost the others: each is
            # applied on its own, and the one that still fails is kept with its reason.
            log.warning(
                "whatsapp_status_batch_failed", error=type(err).__name__, statuses=len(statuses)
            )
            outcome, taken = StatusOutcome(0, 0, 0, 0), Counter()
            for status in sorted(statuses, key=lambda s: _STATUS_ORDER[s.report.status]):
                try:
                    one, one_taken = await self._status_unit(config, [status])
                except OUTAGE_ERRORS:
                    raise
                except Exception as single:
                    if isinstance(single, asyncpg.PostgresError) and is_outage(single):
                        raise
                    self._failed(await self.route(status.where), status, single)
                    continue
                outcome = StatusOutcome(
                    outcome.received + one.received,
                    outcome.new + one.new,
                    outcome.pending + one.pending,
                    outcome.messages + one.messages,
                )
                taken += one_taken
        self.count("status", "applied", outcome.new)
        self.count("status", "duplicate", outcome.received - outcome.new)
        log.info(
            "whatsapp_statuses",
            received=outcome.received,
            new=outcome.new,
            pending=outcome.pending,
            messages=outcome.messages,
            policy=dict(taken),
        )
        return outcome.new

    async def _status_unit(
        self, config: StatusPolicyConfig, statuses: list[Status]
    ) -> tuple[StatusOutcome, Counter[str]]:
        """`statuses` and the policy for their new failures, in one unit of work."""
        async with self.ingest.plat.bus.unit(acquire_timeout=5) as unit:
            outcome = await apply_statuses(unit.conn, CHANNEL, [s.report for s in statuses])
            taken = await apply_failure_policy(unit.conn, unit, config, outcome.failures)
        return outcome, taken

    async def _write_kept(self) -> None:
        """Every kept event, in one transaction; if the database refuses it for a reason that is
        not an outage, each event on its own: one it will not store is kept as text (`_as_text`),
        and one that cannot be stored even so is logged, never the others lost."""
        if not self.kept:
            return
        grouped: dict[tuple[uuid.UUID, str], list[dict[str, Any]]] = defaultdict(list)
        for company_id, kind, payload in self.kept:
            grouped[(company_id, kind)].append(payload)
        async with self.pool.acquire(timeout=5) as conn:
            try:
                async with conn.transaction():
                    for (company_id, kind), payloads in grouped.items():
                        await _insert_events(conn, company_id, kind, payloads)
                return
            except asyncpg.PostgresError as err:
                if is_outage(err):
                    raise
                log.warning("whatsapp_kept_batch_failed", error=type(err).__name__)
            for (company_id, kind), payloads in grouped.items():
                for payload in payloads:
                    await self._write_one(conn, company_id, kind, payload)

    async def _write_one(
        self, conn: asyncpg.Connection, company_id: uuid.UUID, kind: str, payload: dict[str, Any]
    ) -> None:
        try:
            await _insert_events(conn, company_id, kind, [payload])
            return
        except asyncpg.PostgresError as err:
            if is_outage(err):
                raise
            error: BaseException = err
        try:
            await _insert_events(conn, company_id, kind, [_as_text(payload, error)])
        except asyncpg.PostgresError as err:
            if is_outage(err):
                raise
            self.count(str(payload.get("kind") or kind), "lost")
            log.error("whatsapp_kept_event_lost", type=kind, error=type(err).__name__)


async def _insert_events(
    conn: asyncpg.Connection, company_id: uuid.UUID, kind: str, payloads: list[dict[str, Any]]
) -> None:
    await conn.execute(
        "INSERT INTO events (company_id, type, payload)"
        " SELECT $1, $2, p FROM unnest($3::jsonb[]) AS p",
        company_id,
        kind,
        payloads,
    )


def _as_text(payload: dict[str, Any], err: BaseException) -> dict[str, Any]:
    """A kept event the database would not store (a value JSON cannot carry, such as a number
    too large for a double, read as infinity): its kind and reason, and the rest as text."""
    text = json.dumps(payload, default=str, ensure_ascii=False)
    return {
        "kind": str(payload.get("kind"))[:300],
        "reason": str(payload.get("reason"))[:500],
        "unstorable": f"{type(err).__name__}: {err}"[:300],
        "item": text[: RAW_CHARS * 4],
    }


async def _link_in(unit: Unit, *, route: CompanyRoute, senders: list[Sender]) -> None:
    await _link(unit.conn, route=route, senders=senders)


async def _link(conn: asyncpg.Connection, *, route: CompanyRoute, senders: list[Sender]) -> None:
    await link_identities(conn, route, senders)


async def handle_notification(
    ingest: Ingest, payload: dict[str, Any], routed: Routed
) -> dict[str, object]:
    return await Notification(ingest, routed).handle(payload)
