"""Tasks that exist only in tests: the bus's own tests need jobs at every priority level and a
handler that no service owns. They belong to the pseudo-service "test", which no start-up check
covers."""

from __future__ import annotations

from shvya_common.contracts.jobs import TASKS, TaskSpec

TEST_TASKS = (
    TaskSpec("test.step", 70, "test", None),
    TaskSpec("test.mail", 60, "test", None),
    TaskSpec("test.work", 50, "test", None),
)


def register() -> None:
    for spec in TEST_TASKS:
        TASKS.setdefault(spec.name, spec)
