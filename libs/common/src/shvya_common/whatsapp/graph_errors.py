"""The one table of Graph error codes the platform knows, and what each makes us do.

Every code maps to one action:

    retry       the request may pass as it is: retry on the job schedule (send time), or send
                once more a few minutes later (a failed status)
    defer       the request may pass later: wait `defer_seconds`, spending no attempt
    pause       the sender itself is refused: pause the channel for the company, until the
                credentials change (`pause="credentials"`), for the block time (`"block"`) or
                for the account-problem time (`"account"`)
    suppress    the recipient refuses this kind of message: suppress them (`scope`)
    permanent   retrying cannot help: dead-letter with the reason

and an optional `effect`: `fallback_template` (131047: the company's fallback template instead,
or hold) or `flag_undeliverable` (mark the lead unreachable on WhatsApp).

Graph's `is_transient` flag is honoured: a transient error whose code we would otherwise treat
as permanent (or do not know) is retried. It never cancels a pause, a suppression or a deferral,
which are about the account or the person, not the request. Unknown codes fall back to the HTTP
status: 5xx and 429 retry, other 4xx are permanent.

`source` says where each mapping comes from: Meta's "WhatsApp error codes" reference
(developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes), by
section, with Meta's advice (paraphrased, not quoted); or, where Meta gives none, our
reasoning. docs/whatsapp-cloud.md renders this table for operators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["retry", "defer", "pause", "suppress", "permanent"]
PauseKind = Literal["credentials", "block", "account"]
Effect = Literal["fallback_template", "flag_undeliverable"]

META = "Meta error codes"


@dataclass(frozen=True)
class GraphCode:
    """What one Graph error code means and what we do about it."""

    code: int
    meaning: str
    action: Action
    source: str
    defer_seconds: float | None = None
    pause: PauseKind | None = None
    scope: Literal["marketing", "all"] | None = None
    effect: Effect | None = None
    # The last code of a range (200-299 share one meaning).
    through: int | None = None


def _entries() -> tuple[GraphCode, ...]:
    p: Action = "pause"
    r: Action = "retry"
    d: Action = "defer"
    s: Action = "suppress"
    x: Action = "permanent"
    auth = f"{META}, authorization: 'get a new access token' / check the token's permissions"
    throttle = f"{META}, throttling: 'try again later or reduce the frequency'"
    integrity = f"{META}, integrity: the account is restricted; see Policy Enforcement"
    return (
        GraphCode(
            0,
            "AuthException: the app user could not be authenticated",
            p,
            auth,
            pause="credentials",
        ),
        GraphCode(
            1,
            "API Unknown: invalid request or possible server error",
            r,
            f"{META}: 'check the WhatsApp Business Platform Status page' (server side)",
        ),
        GraphCode(
            2,
            "API Service: temporary downtime or overload",
            r,
            f"{META}: 'temporary due to downtime or due to being overloaded'",
        ),
        GraphCode(3, "API Method: capability or permissions issue", p, auth, pause="credentials"),
        GraphCode(4, "API Too Many Calls: app rate limit", r, throttle),
        GraphCode(
            10, "Permission Denied: permission not granted or removed", p, auth, pause="credentials"
        ),
        GraphCode(
            33,
            "Parameter value is not valid: the business phone number was deleted",
            p,
            f"{META}: 'verify that the business phone number is correct'",
            pause="account",
        ),
        GraphCode(
            100, "Invalid parameter", x, f"{META}: fix the request; see the endpoint's reference"
        ),
        GraphCode(190, "Access token has expired", p, auth, pause="credentials"),
        GraphCode(
            200,
            "API Permission: permission not granted or removed",
            p,
            auth,
            pause="credentials",
            through=299,
        ),
        GraphCode(368, "Temporarily blocked for policies violations", p, integrity, pause="block"),
        GraphCode(80007, "Rate limit issues: WhatsApp Business Account rate limit", r, throttle),
        GraphCode(130429, "Rate limit hit: Cloud API throughput reached", r, throttle),
        GraphCode(
            130472,
            "User's number is part of an experiment",
            x,
            f"{META}: Meta withholds the message for an experiment; do not resend",
        ),
        GraphCode(
            130497,
            "Business account is restricted from messaging users in this country",
            x,
            f"{META}: allowed countries depend on the business category (recipient)",
        ),
        GraphCode(
            131000, "Something went wrong", r, f"{META}: 'unknown error... try again' (Meta side)"
        ),
        GraphCode(
            131005, "Access denied: permission not granted or removed", p, auth, pause="credentials"
        ),
        GraphCode(131008, "Required parameter is missing", x, f"{META}: fix the request"),
        GraphCode(131009, "Parameter value is not valid", x, f"{META}: fix the request"),
        GraphCode(
            131016,
            "Service unavailable",
            r,
            f"{META}: 'a service is temporarily unavailable... try again'",
        ),
        GraphCode(
            131021,
            "Recipient cannot be sender",
            x,
            f"{META}: the recipient is the business number itself",
            effect="flag_undeliverable",
        ),
        GraphCode(
            131026,
            "Message undeliverable",
            x,
            f"{META}: the number is not on WhatsApp, has not accepted the terms or runs an "
            "old app; resending does not help",
            effect="flag_undeliverable",
        ),
        GraphCode(
            131031,
            "Business Account locked",
            p,
            f"{META}: the account is restricted or disabled for a policy violation, or "
            "its data could not be verified",
            pause="account",
        ),
        GraphCode(
            131037,
            "The number needs display name approval before messages can be sent",
            p,
            f"{META}: 'the display name must be approved' (account setup)",
            pause="account",
        ),
        GraphCode(
            131042,
            "Business eligibility payment issue",
            p,
            f"{META}: 'verify that a payment method is set up' (account setup)",
            pause="account",
        ),
        GraphCode(
            131045,
            "Incorrect certificate: phone number registration error",
            p,
            f"{META}: 'register the phone number' (account setup)",
            pause="account",
        ),
        GraphCode(
            131047,
            "Re-engagement message: more than 24 hours since the customer last replied",
            x,
            f"{META}: 'send the recipient a business-initiated message using a template'",
            effect="fallback_template",
        ),
        GraphCode(
            131048,
            "Spam rate limit hit",
            p,
            f"{META}, throttling: too many messages flagged as spam; 'check your quality status'",
            pause="block",
        ),
        GraphCode(
            131049,
            "Meta chose not to deliver, to keep ecosystem engagement healthy",
            d,
            f"{META}: per-user marketing limits; 'do not retry immediately' — we wait "
            "24 h (issue #10)",
            defer_seconds=86_400.0,
        ),
        GraphCode(
            131050,
            "The user stopped marketing messages from the business",
            s,
            f"{META}: the user opted out of marketing; replies are still allowed",
            scope="marketing",
        ),
        GraphCode(131051, "Unsupported message type", x, f"{META}: fix the request"),
        GraphCode(
            131052, "Media download error", x, f"{META}: 'ask the user to send the media again'"
        ),
        GraphCode(131053, "Media upload error", x, f"{META}: fix the media file"),
        GraphCode(
            131056,
            "(Business, Consumer) pair rate limit hit",
            r,
            f"{META}, throttling: 'wait and retry' to the same number",
        ),
        GraphCode(
            131057,
            "Account in maintenance mode (e.g. a throughput upgrade)",
            d,
            f"{META}: the account is temporarily unavailable; we re-check in 10 min",
            defer_seconds=600.0,
        ),
        GraphCode(
            131062,
            "Business-scoped user id recipients are not supported for this message",
            x,
            f"{META}, BSUID guide: e.g. authentication templates need a phone number",
        ),
        GraphCode(
            131063,
            "Account-level messaging limit",
            p,
            "issue #10 (account-level limit; not in Meta's table when this was written): "
            "pause rather than dead-letter each message",
            pause="account",
        ),
        GraphCode(
            131064,
            "Account-level messaging limit",
            p,
            "issue #10 (account-level limit; not in Meta's table when this was written): "
            "pause rather than dead-letter each message",
            pause="account",
        ),
        GraphCode(132000, "Template parameter count mismatch", x, f"{META}: fix the template call"),
        GraphCode(
            132001,
            "Template does not exist in this language",
            x,
            f"{META}: fix the template name or language",
        ),
        GraphCode(132005, "Template hydrated text too long", x, f"{META}: shorten the parameters"),
        GraphCode(
            132007, "Template format character policy violated", x, f"{META}: fix the parameters"
        ),
        GraphCode(132012, "Template parameter format mismatch", x, f"{META}: fix the parameters"),
        GraphCode(
            132015,
            "Template is paused for low quality",
            d,
            f"{META}: paused templates resume after 3 h (first pause) or 6 h (second); we "
            "re-check hourly",
            defer_seconds=3600.0,
        ),
        GraphCode(
            132016,
            "Template is disabled (paused too many times)",
            x,
            f"{META}: 'create a new template'",
        ),
        GraphCode(132068, "Flow is blocked", x, f"{META}: fix the flow"),
        GraphCode(
            132069,
            "Flow is throttled",
            d,
            f"{META}: too many messages with this flow in the last hour; wait",
            defer_seconds=3600.0,
        ),
        GraphCode(
            133000,
            "Incomplete deregistration",
            p,
            f"{META}: 'deregister the number again' (account setup)",
            pause="account",
        ),
        GraphCode(
            133004,
            "Server temporarily unavailable",
            r,
            f"{META}: 'check the status page... try again'",
        ),
        GraphCode(
            133006,
            "Phone number re-verification needed",
            p,
            f"{META}: 'verify the phone number' (account setup)",
            pause="account",
        ),
        GraphCode(
            133010,
            "Phone number not registered on the Cloud API",
            p,
            f"{META}: 'register the phone number' (account setup)",
            pause="account",
        ),
        GraphCode(135000, "Generic user error", x, f"{META}: fix the request"),
    )


TABLE: tuple[GraphCode, ...] = _entries()
_BY_CODE: dict[int, GraphCode] = {
    code: entry for entry in TABLE for code in range(entry.code, (entry.through or entry.code) + 1)
}


def lookup(code: int | None) -> GraphCode | None:
    """The table's entry for `code`, or None for a code it does not know."""
    return _BY_CODE.get(code) if code is not None else None


@dataclass(frozen=True)
class Decision:
    """What to do about one error: the action and the entry (None for unknown codes)."""

    action: Action
    entry: GraphCode | None
    why: str

    @property
    def effect(self) -> Effect | None:
        return self.entry.effect if self.entry is not None else None


def decide(
    code: int | None, *, http_status: int | None = None, is_transient: bool | None = None
) -> Decision:
    """The action for a Graph error: the table first, then `is_transient`, then the status."""
    entry = lookup(code)
    if entry is not None:
        if entry.action == "permanent" and is_transient and entry.effect is None:
            return Decision("retry", entry, "Graph marks this error transient")
        return Decision(entry.action, entry, entry.source)
    if is_transient:
        return Decision("retry", None, "unknown code that Graph marks transient")
    if http_status is not None and (http_status >= 500 or http_status == 429):
        return Decision("retry", None, f"unknown code, HTTP {http_status}")
    return Decision("permanent", None, "unknown code")
