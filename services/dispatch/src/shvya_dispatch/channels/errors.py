"""Provider refusals that need more than retry-or-dead-letter; the send handler acts on each.

    PermanentError (shvya_common.errors)
    ├── WindowClosedError       free text refused outside the customer-service window: send the
    │                           company's fallback template instead, or hold the message
    ├── RecipientOptedOutError  the recipient stopped this kind of message: suppress, dead-letter
    ├── UndeliverableError      the recipient cannot get WhatsApp messages (131026 and friends):
    │                           flag the lead, dead-letter
    ├── ChannelPausedError      the provider refuses the sender itself (token, policy, spam):
    │                           pause the channel for the company and defer the send
    └── SendOutcomeUnknown      the request may have reached the provider but no answer came
                                (read timeout, connection dropped mid-reply): record the send
                                as 'unknown' and never repeat it, since a retry could deliver
                                the message twice

All of them are permanent at heart, so a caller that does not know them dead-letters the send;
none of them is ever retried as it was.
"""

from __future__ import annotations

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


class SendOutcomeUnknown(PermanentError):
    """The provider may have accepted the message; repeating it could deliver it twice."""
