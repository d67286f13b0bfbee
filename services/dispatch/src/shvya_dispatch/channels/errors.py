"""Provider refusals that need more than retry-or-dead-letter; the send handler acts on each.

    PermanentError (shvya_common.errors)
    ├── WindowClosedError       free text refused outside the customer-service window: send the
    │                           company's fallback template instead, or hold the message
    ├── RecipientOptedOutError  the recipient stopped this kind of message: suppress, dead-letter
    ├── UndeliverableError      the recipient cannot get WhatsApp messages (131026 and friends):
    │                           flag the lead, dead-letter
    ├── ChannelPausedError      the provider refuses the sender itself (token, policy, spam):
    │                           pause the channel for the company and defer the send
    ├── AccountPausedError      a WhatsApp Web account cannot send (reach-out timelock 463,
    │   │                       restriction, ban, logout): pause the account, defer its sends
    │   └── (WhatsAppWebLoggedOut, in the channel)
    └── SendOutcomeUnknown      the request may have reached the provider but no answer came
                                (read timeout, connection dropped mid-reply): record the send
                                as 'unknown' and never repeat it, since a retry could deliver
                                the message twice

All of them are permanent at heart, so a caller that does not know them dead-letters the send;
none of them is ever retried as it was.
"""

from __future__ import annotations

from typing import Any, Literal

from shvya_common.errors import PermanentError


class ProviderRefusal(PermanentError):
    """A refusal that carries the provider's error code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class WindowClosedError(ProviderRefusal):
    """Free text outside the customer-service window (WhatsApp 131047)."""


class RecipientOptedOutError(ProviderRefusal):
    """The recipient opted out of these messages (WhatsApp 131050: marketing)."""

    scope = "marketing"


class UndeliverableError(ProviderRefusal):
    """The recipient cannot receive WhatsApp messages (not on WhatsApp, old app, terms)."""


class ChannelPausedError(ProviderRefusal):
    """The sender is refused until someone acts (WhatsApp 190) or a block passes (368, 131048).

    `pause_seconds` is None for a pause that lasts until lifted; `credential_bound` means the
    pause ends as soon as the channel runs with different credentials.
    """

    def __init__(
        self, code: int, reason: str, *, pause_seconds: float | None, credential_bound: bool
    ) -> None:
        super().__init__(code, reason)
        self.pause_seconds = pause_seconds
        self.credential_bound = credential_bound


class AccountPausedError(ProviderRefusal):
    """A WhatsApp Web account cannot send for now: WhatsApp's reach-out timelock (463), a
    restriction, a ban, or a session that was logged out. The account is paused with this
    reason (`kind`) and its sends deferred, never retried into the restriction.

    `scope` 'new_contacts' (the timelock) still lets replies to existing chats through;
    `pause_seconds` None pauses until someone lifts it or the account is linked again."""

    def __init__(
        self,
        account: str,
        kind: str,
        code: int,
        reason: str,
        *,
        pause_seconds: float | None,
        scope: Literal["all", "new_contacts"] = "all",
    ) -> None:
        super().__init__(code, reason)
        self.account = account
        self.kind = kind
        self.pause_seconds = pause_seconds
        self.scope = scope
        # Set once the pause is written (the channel does it before releasing the account).
        self.recorded = False


class SendOutcomeUnknown(PermanentError):
    """The provider may have accepted the message; repeating it could deliver it twice.

    `provider_message_id` is the id the message would carry when the channel knows it in
    advance (WhatsApp Web), so a late acknowledgement can still confirm it."""

    def __init__(
        self,
        message: str,
        *,
        provider_message_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.provider_message_id = provider_message_id
        self.meta = dict(meta or {})
