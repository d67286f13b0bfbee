"""Subject and stream names, defined once.

Jobs travel on `<prefix>.jobs.p<level>.<task>.<id>` in the work-queue stream `<PREFIX>_JOBS`;
every service has one durable pull consumer per priority level, so a worker can always ask for
the highest waiting level first. The last token is the job's id (for a send, its message's id):
the reconciler asks JetStream for the last message on that subject to learn whether a stuck
row still has a message, and an operator can `nats stream get` one job. Dead letters are kept in
`<PREFIX>_DLQ` on `<prefix>.dlq.<task>`. Live notices for the console go on core NATS (no
stream, nothing kept) on `<prefix>.live.<company id>`.
"""

from __future__ import annotations

from dataclasses import dataclass

# The priority classes of the original design, highest first. A job's priority is rounded down
# to one of these levels to pick its subject; the exact number is kept in the jobs table.
PRIORITY_LEVELS: tuple[int, ...] = (100, 95, 90, 70, 60, 50)


def priority_level(priority: int) -> int:
    """The subject level for a priority: the highest level not above it (the lowest below 50)."""
    for level in PRIORITY_LEVELS:
        if priority >= level:
            return level
    return PRIORITY_LEVELS[-1]


@dataclass(frozen=True)
class Topology:
    """Every stream, subject and consumer name for one install (one prefix)."""

    prefix: str = "shvya"

    @property
    def jobs_stream(self) -> str:
        return f"{self.prefix.upper()}_JOBS"

    @property
    def dlq_stream(self) -> str:
        return f"{self.prefix.upper()}_DLQ"

    @property
    def jobs_subjects(self) -> str:
        return f"{self.prefix}.jobs.>"

    @property
    def dlq_subjects(self) -> str:
        return f"{self.prefix}.dlq.>"

    def job_subject(self, task: str, priority: int, job_id: object) -> str:
        return f"{self.prefix}.jobs.p{priority_level(priority)}.{task}.{job_id}"

    def task_filter(self, task: str, level: int) -> str:
        """Every job of `task` at `level` (a consumer's filter)."""
        return f"{self.prefix}.jobs.p{level}.{task}.*"

    def dlq_subject(self, task: str) -> str:
        return f"{self.prefix}.dlq.{task}"

    def doorbell_subject(self, task: str) -> str:
        """Matches a task's job subjects at every level; workers listen here to wake up."""
        return f"{self.prefix}.jobs.*.{task}.*"

    def consumer_name(self, service: str, level: int) -> str:
        return f"{service}-p{level}"

    def live_subject(self, company_id: object) -> str:
        """Core NATS (no stream): a company's notices that events were written (`LiveNotice`)."""
        return f"{self.prefix}.live.{company_id}"

    @property
    def live_subjects(self) -> str:
        return f"{self.prefix}.live.*"
