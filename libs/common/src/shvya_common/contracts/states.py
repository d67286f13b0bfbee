"""The statuses of a job and of an outbound send, and the moves allowed between them.

The bus (`shvya_common.bus.ledgers`) is the only writer of both columns. Every write names the
statuses it may move from (taken from these tables) and the attempt that owns the row, so a
stale run can never overwrite a newer one and a terminal state is never left, except by the
moves listed here (a replay of a dead letter; a late confirmation of an unknown send).

Jobs (`jobs.status`)::

    queued ──claim──▶ processing ──▶ completed
      ▲                 │  │  └────▶ failed ──claim──▶ processing ...
      │ timer fires     │  └───────▶ dlq ──replay──▶ queued
    scheduled ◀─defer───┘  (and back to queued when an outage, not the job, failed it)

    orphaned: a message whose row never existed; terminal, never replayed.

Sends (`messages.status`, outbound rows; the claim leaves the status alone and takes a lease)::

    queued / retrying ──▶ sending ──▶ sent | logged | unknown
          │    ▲              └─────▶ retrying (the request never left)
          │    └ timer fires: scheduled ◀── defer
          └──▶ suppressed | held | dlq (──replay──▶ queued) | cancelled

    unknown ──▶ sent: a late confirmation that the provider did take it.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    DLQ = "dlq"
    ORPHANED = "orphaned"


class SendStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SCHEDULED = "scheduled"
    SENT = "sent"
    LOGGED = "logged"
    UNKNOWN = "unknown"
    SUPPRESSED = "suppressed"
    HELD = "held"
    DLQ = "dlq"
    CANCELLED = "cancelled"


J, S = JobStatus, SendStatus

JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    J.QUEUED: frozenset({J.PROCESSING, J.DLQ}),
    J.PROCESSING: frozenset({J.COMPLETED, J.FAILED, J.DLQ, J.SCHEDULED, J.QUEUED, J.PROCESSING}),
    J.FAILED: frozenset({J.PROCESSING, J.DLQ}),
    J.SCHEDULED: frozenset({J.QUEUED}),
    J.DLQ: frozenset({J.QUEUED}),
    J.COMPLETED: frozenset(),
    J.ORPHANED: frozenset(),
}

SEND_TRANSITIONS: dict[SendStatus, frozenset[SendStatus]] = {
    S.QUEUED: frozenset(
        {S.SENDING, S.RETRYING, S.SCHEDULED, S.SUPPRESSED, S.HELD, S.DLQ, S.UNKNOWN, S.CANCELLED}
    ),
    S.RETRYING: frozenset(
        {S.SENDING, S.RETRYING, S.SCHEDULED, S.SUPPRESSED, S.HELD, S.DLQ, S.UNKNOWN, S.CANCELLED}
    ),
    S.SENDING: frozenset(
        {S.SENT, S.LOGGED, S.UNKNOWN, S.RETRYING, S.SCHEDULED, S.HELD, S.SUPPRESSED, S.DLQ}
    ),
    S.SCHEDULED: frozenset({S.QUEUED, S.CANCELLED}),
    S.UNKNOWN: frozenset({S.SENT}),
    S.DLQ: frozenset({S.QUEUED}),
    S.SENT: frozenset(),
    S.LOGGED: frozenset(),
    S.SUPPRESSED: frozenset(),
    S.HELD: frozenset(),
    S.CANCELLED: frozenset(),
}

# Statuses in which a row needs a message in JetStream (or a live run) to make progress.
JOB_LIVE: frozenset[JobStatus] = frozenset({J.QUEUED, J.PROCESSING, J.FAILED})
SEND_LIVE: frozenset[SendStatus] = frozenset({S.QUEUED, S.RETRYING, S.SENDING})
# A send that may have reached its recipient: never sent again, never replayed.
SEND_MAY_HAVE_LEFT: frozenset[SendStatus] = frozenset({S.SENDING, S.SENT, S.LOGGED, S.UNKNOWN})


def job_sources(to: JobStatus) -> list[str]:
    """The statuses a job may move to `to` from, as SQL array parameters."""
    return sorted(s.value for s, targets in JOB_TRANSITIONS.items() if to in targets)


def send_sources(to: SendStatus) -> list[str]:
    """The statuses a send may move to `to` from, as SQL array parameters."""
    return sorted(s.value for s, targets in SEND_TRANSITIONS.items() if to in targets)


# Statuses after which no run of the job or send will happen unless an operator replays it.
JOB_FINISHED: frozenset[JobStatus] = frozenset({J.COMPLETED, J.DLQ, J.ORPHANED})
SEND_FINISHED: frozenset[SendStatus] = frozenset(
    {S.SENT, S.LOGGED, S.UNKNOWN, S.SUPPRESSED, S.HELD, S.DLQ, S.CANCELLED}
)
