"""The send-time policy engine: what may leave now, what waits, and what never leaves.

Before a send reaches its channel, `handle_send` asks the engine, in this order:

1. Suppression. A suppressed recipient is never sent to: the send completes as 'suppressed',
   with an event. Scope 'all' blocks every purpose, scope 'marketing' blocks marketing and
   follow-ups. A suppression on one WhatsApp channel covers both (same person, same app). The one
   exception is an opt-out confirmation sent within a grace period after the opt-out. Then a
   send asked for later (`SendParams.not_before`) is deferred until that moment.
2. Channel pause. If the provider refused the company's sender (expired token, policy or spam
   block), its sends are deferred and re-checked every few minutes. None is lost, none burns an
   attempt, and they flow again on their own once the pause ends. A pause is the company's
   alone, and one bound to refused credentials ends when the company's account (or, without
   one, the platform) sends with other credentials.
   A lead WhatsApp reported undeliverable (131026 and friends) is not sent to on WhatsApp
   Cloud until it writes again: the send is held ('held', with the flag's reason).
3. Customer-service window (WhatsApp Cloud). Free text is allowed only within N hours of the
   lead's last inbound message. Outside it, only an approved template may go, and that includes
   a first message to a lead who never wrote. Free text outside the window becomes the
   company's fallback template, or is held ('held', with an event); it is never sent as free
   text.
4. Quiet hours (email by default): sends go out only between start and end in the lead's time
   zone, else the company's; outside them the send is deferred to the next start.
5. Pacing. There is a least gap between sends per recipient (WhatsApp Cloud), or per account
   (WhatsApp Web, with random jitter and a daily cap). A blocked send is deferred to the moment
   the slot frees (for a reached cap, the next local day).

WhatsApp Web accounts have ban-aware rules of their own (`web_policy`): only the replica that
drives the account sends from it; a paused account (restriction, timelock 463, ban, logout)
defers its sends, or moves them to WhatsApp Cloud where the lead's window allows; a new number
warms up; first contacts and identical texts have caps of their own; quiet hours apply in the
lead's time zone by default.

Deferrals raise `DeferJob`: the consumer loop parks the send in a durable timer, the scheduler
re-publishes it at that moment, and no retry attempt is spent.

Pacing state is shared by every dispatch process in Postgres (`send_pacing`). A send takes its
slot with one `INSERT ... ON CONFLICT DO UPDATE ... WHERE <slot free>`, which row-locks the key,
so two processes can never both take it. The slot is held as a lease while the send is in
flight, and the gap counts from the moment the send was recorded. We do not use the `limits`
library: it keeps counters in Redis, Memcached, MongoDB or memory, not Postgres. It answers
"may I, now?" where we need "when, at the earliest?" for the deferral, and it has neither the
in-flight lease nor the local-day cap. One SQL statement adds no new server and no new
dependency.

Defaults come from settings (`POLICY_*`). A company overrides them per channel in
`companies.settings`, e.g. `{"policies": {"email": {"quiet_hours": "09:00-20:00"},
"whatsapp_web": {"daily_cap": 100}}}`; keys are the fields of `ChannelPolicy`.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shvya_common.contracts import SendParams
from shvya_common.errors import DeferJob, PermanentError
from shvya_common.whatsapp.templates import fallback_template_setting
from shvya_dispatch.channels.errors import (
    AccountPausedError,
    ChannelPausedError,
    RecipientOptedOutError,
    UndeliverableError,
)

if TYPE_CHECKING:
    from shvya_dispatch.repository import PolicyRepository
    from shvya_dispatch.settings import DispatchSettings
    from shvya_dispatch.web_policy import WebRules
    from shvya_dispatch.whatsapp_repository import WhatsAppRepository

__all__ = ["PolicyEngine", "Verdict", "fallback_template_setting"]

log = structlog.get_logger(__name__)

MARKETING_PURPOSES = frozenset({"marketing", "followup"})
WHATSAPP_CHANNELS = ("whatsapp_cloud", "whatsapp_web", "whatsapp")
QUIET_HOURS_PATTERN = r"^\d{1,2}:\d{2}-\d{1,2}:\d{2}$"
# A blocked reservation re-reads the slot and tries again this often before deferring briefly.
_RESERVE_TRIES = 3


@dataclass(frozen=True)
class QuietHours:
    """The local hours sends are allowed in: [start, end), wrapping past midnight if end < start."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str | None) -> QuietHours | None:
        if not text:
            return None
        try:
            first, second = text.split("-")
            start, end = (time.fromisoformat(part.strip().zfill(5)) for part in (first, second))
        except ValueError as err:
            raise ValueError(f"quiet hours must look like 08:00-22:00, got {text!r}") from err
        if start == end:
            raise ValueError(f"quiet hours {text!r} allow no time at all")
        return cls(start, end)

    def allows(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def next_start(self, now: datetime, zone: ZoneInfo) -> datetime:
        """The first moment after `now` when sending is allowed again (`now` is outside)."""
        local = now.astimezone(zone)
        candidate = datetime.combine(local.date(), self.start, tzinfo=zone)
        if candidate <= local:
            candidate = datetime.combine(local.date() + timedelta(days=1), self.start, tzinfo=zone)
        return candidate


class ChannelPolicy(BaseModel):
    """The rules of one channel for one company."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    min_gap_seconds: float = Field(0.0, ge=0)
    jitter_seconds: float = Field(0.0, ge=0)
    # Sends per pacing key per local day (the company's time zone); 0 = no cap.
    daily_cap: int = Field(0, ge=0)
    pace_by: Literal["recipient", "account"] = "recipient"
    # Free text only within this many hours of the lead's last inbound message; None = no rule.
    window_hours: float | None = Field(None, gt=0)
    quiet_hours: str | None = Field(None, pattern=QUIET_HOURS_PATTERN)

    @property
    def quiet(self) -> QuietHours | None:
        return QuietHours.parse(self.quiet_hours)

    @property
    def paces(self) -> bool:
        return self.min_gap_seconds > 0 or self.daily_cap > 0


def default_policies(settings: DispatchSettings) -> dict[str, ChannelPolicy]:
    """Each channel's defaults from settings; channels not named here have no rules."""
    return {
        "whatsapp_cloud": ChannelPolicy(
            min_gap_seconds=settings.policy_whatsapp_cloud_min_gap_seconds,
            window_hours=settings.policy_whatsapp_cloud_window_hours,
            pace_by="recipient",
        ),
        "whatsapp_web": ChannelPolicy(
            min_gap_seconds=settings.policy_whatsapp_web_min_gap_seconds,
            jitter_seconds=settings.policy_whatsapp_web_jitter_seconds,
            daily_cap=settings.policy_whatsapp_web_daily_cap,
            pace_by="account",
            quiet_hours=settings.policy_whatsapp_web_quiet_hours or None,
        ),
        "email": ChannelPolicy(quiet_hours=settings.policy_email_quiet_hours or None),
    }


def resolve_policy(
    defaults: Mapping[str, ChannelPolicy], channel: str, company_settings: Mapping[str, Any] | None
) -> ChannelPolicy:
    """The defaults for `channel` with the company's overrides on top; bad overrides are logged
    and ignored, so a typo in one company's settings never stops its sends."""
    base = defaults.get(channel, ChannelPolicy())
    policies = (company_settings or {}).get("policies")
    overrides = policies.get(channel) if isinstance(policies, Mapping) else None
    if not isinstance(overrides, Mapping) or not overrides:
        return base
    try:
        merged = ChannelPolicy.model_validate({**base.model_dump(), **overrides})
        merged.quiet  # noqa: B018 - parses the hours, so a bad value is caught here
    except (ValidationError, ValueError) as err:
        log.warning("policy_override_invalid", channel=channel, error=str(err)[:300])
        return base
    return merged


def zone_named(*names: str | None) -> ZoneInfo:
    """The first valid IANA time zone among `names`, else UTC."""
    for name in names:
        if not name:
            continue
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("unknown_time_zone", zone=name)
    return ZoneInfo("UTC")


def in_service_window(last_inbound_at: datetime | None, now: datetime, hours: float) -> bool:
    return last_inbound_at is not None and now - last_inbound_at < timedelta(hours=hours)


def suppression_channels(channel: str) -> list[str]:
    """Suppressions that bind a send on `channel`; 'all' binds every channel."""
    if channel in WHATSAPP_CHANNELS:
        return [*WHATSAPP_CHANNELS, "all"]
    return [channel, "all"]


@dataclass(frozen=True)
class Verdict:
    """What the rules say about one send, before pacing."""

    # 'move': a paused WhatsApp Web account's send goes to the company's WhatsApp Cloud instead.
    action: Literal["send", "suppress", "hold", "move"]
    policy: ChannelPolicy
    company_zone: str
    reason: str = ""
    # Set when free text outside the window is converted to the company's fallback template.
    template_id: uuid.UUID | None = None
    template_name: str | None = None


@dataclass(frozen=True)
class Reservation:
    """A pacing slot held by one send until `settle`."""

    company_id: uuid.UUID
    channel: str
    key: str
    message_id: uuid.UUID
    gap_seconds: float
    # Recorded with the send (WhatsApp Web: first contact, text hash), for the next counts.
    meta: dict[str, Any] = field(default_factory=dict)


async def _no_fingerprint(company_id: uuid.UUID, channel: str) -> str | None:
    return None


@dataclass
class PolicyEngine:
    store: PolicyRepository
    defaults: Mapping[str, ChannelPolicy]
    # The WhatsApp Web account (pacing key) that sends for a company: its own account's
    # profile, else the one settings name.
    account_for: Callable[[uuid.UUID], Awaitable[str]]
    # A fingerprint of the credentials a company sends with on a channel now (its own
    # account's, else the platform's); a pause bound to other credentials no longer applies.
    fingerprint_for: Callable[[uuid.UUID, str], Awaitable[str | None]] = _no_fingerprint
    pause_recheck_seconds: float = 300.0
    lease_seconds: float = 120.0
    optout_grace_seconds: float = 86400.0
    rng: random.Random = field(default_factory=random.Random)
    # Lead flags set by provider refusals (WhatsApp 131026: undeliverable).
    whatsapp: WhatsAppRepository | None = None
    # WhatsApp Web accounts' own rules (`web_policy`), and how an account is paused; None
    # while WhatsApp Web is not enabled (its sends are logged under the channel's rules).
    web: WebRules | None = None
    web_pause: Callable[[AccountPausedError], Awaitable[bool]] | None = None

    @classmethod
    def from_settings(
        cls,
        store: PolicyRepository,
        settings: DispatchSettings,
        fingerprint_for: Callable[[uuid.UUID, str], Awaitable[str | None]],
        account_for: Callable[[uuid.UUID], Awaitable[str]],
        whatsapp: WhatsAppRepository | None = None,
    ) -> PolicyEngine:
        return cls(
            store=store,
            defaults=default_policies(settings),
            account_for=account_for,
            fingerprint_for=fingerprint_for,
            pause_recheck_seconds=settings.policy_pause_recheck_seconds,
            lease_seconds=settings.policy_pacing_lease_seconds,
            optout_grace_seconds=settings.policy_optout_confirmation_grace_seconds,
            whatsapp=whatsapp,
        )

    async def evaluate(self, params: SendParams, message_id: uuid.UUID | None = None) -> Verdict:
        """Apply suppression, pause, window and quiet hours; raises DeferJob to wait. Every
        input comes from one statement (`PolicyRepository.send_state`)."""
        try:
            fingerprint = await self.fingerprint_for(params.company_id, params.channel)
            unusable: Exception | None = None
        except Exception as err:  # raised where the pause is checked, as before
            fingerprint, unusable = None, err
        scopes = ["all", "marketing"] if params.purpose in MARKETING_PURPOSES else ["all"]
        ctx = await self.store.send_state(
            params.company_id,
            params.lead_id,
            channels=suppression_channels(params.channel),
            address=params.to,
            scopes=scopes,
            channel=params.channel,
            fingerprint=fingerprint,
            with_pause=unusable is None,
        )
        if ctx is None:
            raise PermanentError(f"lead {params.lead_id} of company {params.company_id} not found")
        now: datetime = ctx["now"]
        settings: Mapping[str, Any] = ctx["company_settings"] or {}
        policy = resolve_policy(self.defaults, params.channel, settings)
        company_zone = zone_named(ctx["company_timezone"])

        def verdict(
            action: Literal["send", "suppress", "hold", "move"], reason: str = ""
        ) -> Verdict:
            return Verdict(action, policy, company_zone.key, reason)

        suppressed = self._suppressed(params, now, ctx)
        if suppressed:
            return verdict("suppress", suppressed)

        if params.not_before is not None and params.not_before > now:
            # Asked for later (e.g. WhatsApp's 131049: no sooner than 24 h after the failure).
            raise DeferJob(
                params.not_before, f"not before {params.not_before.isoformat(timespec='seconds')}"
            )

        if unusable is not None:
            raise unusable
        if ctx["pause_started"] is not None:
            raise DeferJob(
                self._recheck_at(now, ctx["paused_until"]),
                f"channel {params.channel} paused for this company: {ctx['pause_reason']}",
            )

        if params.channel == "whatsapp_cloud" and ctx["undeliverable_at"] is not None:
            # Meta said the number cannot get WhatsApp messages (131026 and friends: not on
            # WhatsApp, terms not accepted, an old app); resending does not help, and each try
            # is paid for and counts against the number's quality. The flag ends when the lead
            # writes again.
            flagged = ctx["undeliverable_at"].isoformat(timespec="seconds")
            return verdict(
                "hold",
                f"the lead is undeliverable on WhatsApp since {flagged}"
                f" ({ctx['undeliverable_reason']}) and has not written since",
            )

        if params.channel == "whatsapp_web" and self.web is not None:
            gate = await self.web.gate(
                params, await self.account_for(params.company_id), now, message_id
            )
            if gate.action != "send":
                return verdict(gate.action, gate.reason)

        converted: Verdict | None = None
        if policy.window_hours is not None and params.template_id is None:
            if not in_service_window(ctx["last_inbound_at"], now, policy.window_hours):
                outside = self._outside_window_reason(ctx["last_inbound_at"], policy.window_hours)
                fallback = await self.fallback_template(params.company_id, settings)
                if fallback is None:
                    return verdict("hold", f"{outside}, and the company has no fallback template")
                converted = Verdict("send", policy, company_zone.key, outside, *fallback)

        quiet = policy.quiet
        if quiet is not None:
            zone = zone_named(ctx["lead_timezone"], ctx["company_timezone"])
            if not quiet.allows(now.astimezone(zone).time()):
                raise DeferJob(
                    quiet.next_start(now, zone),
                    f"quiet hours: {params.channel} sends only {policy.quiet_hours} ({zone.key})",
                )
        return converted or verdict("send")

    def _suppressed(self, params: SendParams, now: datetime, ctx: Mapping[str, Any]) -> str | None:
        """Why the recipient must not get this send, or None."""
        if ctx["suppressed_at"] is None:
            return None
        if params.purpose == "optout_confirmation" and now - ctx["suppressed_at"] <= timedelta(
            seconds=self.optout_grace_seconds
        ):
            return None
        return (
            f"recipient suppressed on {ctx['suppressed_channel']} (scope"
            f" {ctx['suppressed_scope']}): {ctx['suppressed_reason']}"
        )

    @staticmethod
    def _outside_window_reason(last_inbound_at: datetime | None, hours: float) -> str:
        since = (
            "never wrote"
            if last_inbound_at is None
            else f"last wrote {last_inbound_at.isoformat(timespec='seconds')}"
        )
        return f"outside the {hours:g}-hour customer-service window (lead {since})"

    def _recheck_at(self, now: datetime, paused_until: datetime | None) -> datetime:
        recheck = now + timedelta(seconds=self.pause_recheck_seconds)
        return recheck if paused_until is None else min(recheck, paused_until)

    async def fallback_template(
        self, company_id: uuid.UUID, company_settings: Mapping[str, Any] | None = None
    ) -> tuple[uuid.UUID, str] | None:
        """(id, name) of the company's approved WhatsApp fallback template, if it has one."""
        if company_settings is None:
            company_settings = await self.store.company_settings(company_id)
        name, language = fallback_template_setting(company_settings)
        if not name:
            return None
        row = await self.store.approved_whatsapp_template(company_id, name, language)
        if row is None:
            log.warning("fallback_template_missing", template=name, language=language)
            return None
        return row["id"], row["name"]

    async def reserve(
        self, params: SendParams, message_id: uuid.UUID, verdict: Verdict
    ) -> Reservation | None:
        """Take this send's pacing slot, or raise DeferJob until it frees."""
        policy = verdict.policy
        if policy.pace_by == "account":
            key = await self.account_for(params.company_id)
        else:
            key = params.to.strip().lower()
        web = self.web if params.channel == "whatsapp_web" else None
        warmup: str | None = None
        if web is not None:
            cap, warmup = await web.daily_cap(key, policy.daily_cap, datetime.now(UTC))
            policy = policy.model_copy(update={"daily_cap": cap})
        if not policy.paces:
            if web is not None:
                extra = await web.caps(params, key, verdict.company_zone, datetime.now(UTC))
                return Reservation(params.company_id, params.channel, key, message_id, 0.0, extra)
            return None
        lease = self.lease_seconds if policy.min_gap_seconds > 0 else 0.0
        for _ in range(_RESERVE_TRIES):
            taken = await self.store.reserve_slot(
                params.company_id,
                params.channel,
                key,
                message_id,
                lease,
                verdict.company_zone,
                policy.daily_cap,
            )
            if taken:
                gap = policy.min_gap_seconds + self.rng.uniform(0.0, policy.jitter_seconds)
                meta: dict[str, Any] = {}
                if web is not None:
                    try:
                        meta = await web.caps(params, key, verdict.company_zone, datetime.now(UTC))
                    except DeferJob:
                        # Nothing was sent: the slot is given back as it was.
                        await self.store.release_slot(
                            params.company_id, params.channel, key, message_id
                        )
                        raise
                return Reservation(params.company_id, params.channel, key, message_id, gap, meta)
            state = await self.store.slot_state(
                params.company_id, params.channel, key, verdict.company_zone
            )
            if state is None:
                continue
            until, reason = self._blocked_until(state, policy, params.channel, key)
            if warmup is not None and reason.startswith("daily cap"):
                reason = f"{reason} ({warmup})"
            if until > state["now"]:
                raise DeferJob(until, reason)
        raise DeferJob(datetime.now(UTC) + timedelta(seconds=1), "pacing: slot contended")

    @staticmethod
    def _blocked_until(
        state: Mapping[str, Any], policy: ChannelPolicy, channel: str, key: str
    ) -> tuple[datetime, str]:
        now: datetime = state["now"]
        per = "account" if policy.pace_by == "account" else "recipient"
        if policy.daily_cap and state["day"] == state["today"]:
            if state["day_count"] >= policy.daily_cap:
                return state["next_day"], (
                    f"daily cap: {policy.daily_cap} {channel} sends per {per} per day reached"
                )
        gap = f"pacing: at least {policy.min_gap_seconds:g} s between {channel} sends per {per}"
        lease_until = state["lease_until"]
        if lease_until is not None and lease_until > now:
            # Another send holds the slot; the gap counts from when it finishes, so this is
            # the earliest moment it could free.
            earliest = now + timedelta(seconds=max(policy.min_gap_seconds, 1.0))
            return max(state["next_allowed_at"], earliest), f"{gap} (a send is in flight)"
        return state["next_allowed_at"], gap

    async def settle(self, reservation: Reservation) -> None:
        """Release the slot: the next send on this key may go `gap_seconds` from now."""
        try:
            await self.store.settle_slot(
                reservation.company_id,
                reservation.channel,
                reservation.key,
                reservation.message_id,
                reservation.gap_seconds,
            )
        except Exception as err:  # the lease expires by itself; never hide the send's outcome
            log.warning("pacing_settle_failed", error=f"{type(err).__name__}: {err}")

    async def pause(
        self, params: SendParams, message_id: uuid.UUID, err: ChannelPausedError
    ) -> DeferJob:
        """Persist the pause (one event per pause) and return the deferral for this send."""
        current = await self.fingerprint_for(params.company_id, params.channel)
        row = await self.store.start_pause(
            params.company_id,
            params.channel,
            err.code,
            err.reason,
            err.pause_seconds,
            current if err.credential_bound else None,
            current,
            params.lead_id,
            message_id,
        )
        log.warning("channel_paused", channel=params.channel, code=err.code, new=row["created"])
        return DeferJob(
            self._recheck_at(row["now"], row["paused_until"]),
            f"channel {params.channel} paused for this company: {err.reason}",
        )

    async def pause_account(self, params: SendParams, err: AccountPausedError) -> DeferJob:
        """Pause the WhatsApp Web account (one event per pause) and defer this send."""
        if self.web_pause is not None and not err.recorded:
            await self.web_pause(err)
        log.warning("whatsapp_web_account_paused", account=err.account, code=err.kind)
        until = datetime.now(UTC) + timedelta(seconds=self.pause_recheck_seconds)
        if err.pause_seconds is not None:
            until = min(until, datetime.now(UTC) + timedelta(seconds=err.pause_seconds))
        return DeferJob(
            until, f"whatsapp web account {err.account} paused ({err.kind}): {err.reason}"
        )

    async def flag_undeliverable(self, params: SendParams, err: UndeliverableError) -> None:
        if self.whatsapp is not None:
            await self.whatsapp.flag_undeliverable(
                params.company_id, params.lead_id, params.channel, err.code, err.reason
            )
        log.info("lead_flagged_undeliverable", channel=params.channel, code=err.code)

    async def suppress(self, params: SendParams, err: RecipientOptedOutError) -> None:
        await self.store.suppress_recipient(
            params.company_id, params.lead_id, params.channel, params.to, err.scope, err.reason
        )
        log.info("recipient_suppressed", channel=params.channel, scope=err.scope, code=err.code)
