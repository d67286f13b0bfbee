"""The error tree every handler speaks; the consumer loop turns each branch into one action.

    ShvyaError
    ├── RetryableError   try again on the retry schedule (nak with the next delay), then DLQ
    ├── PermanentError   dead-letter now, with the reason; retrying cannot help
    └── DeferJob         not a failure: park the job until a moment (through the scheduler)
                         without spending an attempt

Library errors are mapped to these at the boundary with `raise ... from err`. Anything else a
handler raises is treated as retryable, so a bug never silently drops a job.
"""

from __future__ import annotations

from datetime import datetime


class ShvyaError(Exception):
    """Root of SHVYA's errors."""


class RetryableError(ShvyaError):
    """A failure that may pass: network, rate limit, a dependency briefly down."""


class PermanentError(ShvyaError):
    """A failure that will not pass by retrying: bad data, rejected by the provider."""


class DeferJob(ShvyaError):
    """Run this job again at `until`; raised by policies such as pacing and quiet hours."""

    def __init__(self, until: datetime, reason: str) -> None:
        super().__init__(f"deferred until {until.isoformat()}: {reason}")
        self.until = until
        self.reason = reason
