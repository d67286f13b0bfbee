"""The one path every inbound message takes, whichever door it came in by: /inbound-message, the
WhatsApp Cloud webhook, the email webhook or the SMTP receiver.

`InboundFiler.file` files a batch in one unit of work of the job bus: one statement writes leads,
messages, contacts and events, a second (the bus's) the new messages' ai.engage jobs; after
COMMIT the bus publishes the jobs to JetStream, and `file` returns without waiting for
JetStream's acks (`wait_publish=False`). A success means the messages and their jobs are
committed, and the relay republishes any job whose first publish did not land. A message that
is an opt-out keyword gets no ai.engage job: it suppresses the sender on that channel and
requests exactly one confirmation send (`purpose='optout_confirmation'`, send key
`optout:<message_id>`), whose job id (the outbound message's id, as for every send) stands in
for the engage job in the answer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

import structlog

from shvya_common import tracing
from shvya_common.bus import NewJob, Unit
from shvya_common.contracts.jobs import Channel, SendParams, task_spec
from shvya_common.runtime import Platform
from shvya_ingest.optout import OptOutMatcher
from shvya_ingest.repository import (
    OPTOUT_SEND_KEY_PREFIX,
    CompanyRoute,
    Filed,
    Identity,
    InboundRow,
    IngestRepository,
)
from shvya_ingest.settings import IngestSettings

log = structlog.get_logger(__name__)

# How long a provider address → company mapping is trusted before it is read again.
ROUTE_CACHE_SECONDS = 60.0
# Mail can name any recipient; the cache is dropped rather than grown past this.
ROUTE_CACHE_MAX = 10_000
MAX_BODY_CHARS = 16_384


@dataclass(frozen=True)
class Accepted:
    """The outcome of filing one message. `job_id` is its ai.engage job, or for an opt-out its
    confirmation send; None only when a duplicate's original job cannot be found."""

    message_id: uuid.UUID
    lead_id: uuid.UUID
    job_id: uuid.UUID | None
    created: bool
    optout: bool


def clip_body(text: str) -> str:
    """Bodies longer than the platform keeps are cut, not refused: the message still counts."""
    return text if len(text) <= MAX_BODY_CHARS else text[:MAX_BODY_CHARS]


class InboundFiler:
    def __init__(self, settings: IngestSettings, plat: Platform, repo: IngestRepository) -> None:
        self.settings = settings
        self.plat = plat
        self.repo = repo
        self.optout = OptOutMatcher(settings.optout_keywords)
        self.engage = task_spec("ai.engage")
        self.send = task_spec("dispatch.send")
        self._routes: dict[tuple[str, str], tuple[float, uuid.UUID | None]] = {}

    async def company_for(self, channel: str, address: str) -> uuid.UUID | None:
        """The company registered for a provider address (a WhatsApp phone_number_id, an inbound
        mailbox) in inbound_routes; None means the default company."""
        key = (channel, address)
        cached = self._routes.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        company_id = await self.repo.company_for_address(self.plat.pool, channel, address)
        if len(self._routes) >= ROUTE_CACHE_MAX:
            self._routes.clear()
        self._routes[key] = (now + ROUTE_CACHE_SECONDS, company_id)
        return company_id

    async def file(
        self,
        route: CompanyRoute,
        *,
        identity: Identity,
        channel: Channel,
        rows: Sequence[InboundRow],
    ) -> list[Accepted]:
        """File `rows` for one company and channel; results follow `rows` (a provider id repeated
        within the batch gets the first copy's result, as a duplicate)."""
        first_of: dict[str, int] = {}
        unique: list[InboundRow] = []
        position: list[int] = []
        repeats: set[int] = set()
        for row in rows:
            pid = row.provider_message_id
            if pid is not None and pid in first_of:
                repeats.add(len(position))
                position.append(first_of[pid])
                continue
            if pid is not None:
                first_of[pid] = len(unique)
            position.append(len(unique))
            # "STOP" typed in a WhatsApp group is said to the group, not to the business: not
            # an opt-out, and never answered in private with a confirmation.
            optout = self.optout.matches(row.text) and not row.meta.get("group_id")
            unique.append(replace(row, text=clip_body(row.text), optout=optout))
        if not unique:
            return []
        async with self.plat.bus.unit(acquire_timeout=5, wait_publish=False) as unit:
            conn = unit.conn
            filed = await self.repo.file_inbound(
                conn, route, identity=identity, channel=channel, rows=unique, task=self.engage.name
            )
            await unit.enqueue_jobs(
                [
                    NewJob(
                        self.engage.name,
                        {"lead_id": str(f.lead_id), "message_id": str(f.message_id)},
                        idempotency_key=f"{self.engage.name}:{f.message_id}",
                        company_id=route.company_id,
                        lead_id=f.lead_id,
                        id=f.job_id,
                        traceparent=row.traceparent,
                    )
                    for row, f in zip(unique, filed, strict=True)
                    if f.created and f.job_id is not None
                ]
            )
            confirmations: dict[uuid.UUID, uuid.UUID] = {}
            for row, f in zip(unique, filed, strict=True):
                if f.created and row.optout:
                    with tracing.span("optout confirmation", parent=row.traceparent):
                        confirmations[f.message_id] = await self._confirm_optout(
                            unit, route, channel, row, f
                        )
            missing = [f.message_id for f in filed if not f.created and f.job_id is None]
            if missing:
                confirmations.update(await self.repo.optout_confirmations(conn, missing))
        accepted = [
            Accepted(
                message_id=f.message_id,
                lead_id=f.lead_id,
                job_id=f.job_id or confirmations.get(f.message_id),
                created=f.created,
                optout=f.job_id is None and f.message_id in confirmations,
            )
            for f in filed
        ]
        for a in accepted:
            log.info(
                ("optout_filed" if a.optout else "inbound_filed")
                if a.created
                else "inbound_duplicate",
                message_id=str(a.message_id),
                lead_id=str(a.lead_id),
                company_id=str(route.company_id),
                job_id=str(a.job_id),
                channel=channel,
            )
        return [
            replace(accepted[i], created=False) if n in repeats else accepted[i]
            for n, i in enumerate(position)
        ]

    async def _confirm_optout(
        self,
        unit: Unit,
        route: CompanyRoute,
        channel: Channel,
        row: InboundRow,
        filed: Filed,
    ) -> uuid.UUID:
        params = SendParams(
            company_id=route.company_id,
            lead_id=filed.lead_id,
            channel=channel,
            to=row.address,
            text=self.settings.optout_confirmation_text,
            send_key=f"{OPTOUT_SEND_KEY_PREFIX}{filed.message_id}",
            purpose="optout_confirmation",
            reply_to_message_id=filed.message_id,
        )
        message_id, _ = await unit.request_send(params, priority=self.send.priority)
        return message_id
