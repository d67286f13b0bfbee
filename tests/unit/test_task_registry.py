"""Every task in the contracts has a handler in its service, checked when a service binds its
handlers at start-up: a missing one stops the service with the task named, and a handler whose
parameters are not the contract's, or a second handler, is refused where it is registered."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from shvya_common.bus.registry import MissingHandlers, Registry
from shvya_common.contracts import TASKS
from shvya_common.contracts.jobs import EngageParams, SummaryParams

# Each service's registry, as its app sees it at start-up: importing the app imports the
# modules that register handlers (the scheduler's `tasks.load()` imports its task modules).
REGISTRIES = {
    "engage": ("shvya_engage.app", "shvya_engage.handlers"),
    "dispatch": ("shvya_dispatch.app", "shvya_dispatch.handlers"),
    "ingest": ("shvya_ingest.app", "shvya_ingest.whatsapp_web_inbound"),
    "scheduler": ("shvya_scheduler.app", "shvya_scheduler.registry"),
}


@pytest.mark.parametrize("service", sorted(REGISTRIES))
def test_each_service_has_a_handler_for_every_task_of_its_own(service: str) -> None:
    app, where = REGISTRIES[service]
    started = importlib.import_module(app)
    if hasattr(getattr(started, "tasks", None), "load"):
        started.tasks.load()
    registry: Registry = importlib.import_module(where).registry
    registry.check()
    assert set(registry.tasks) == {n for n, s in TASKS.items() if s.service == service}


def test_a_service_missing_a_handler_refuses_to_start_naming_the_task() -> None:
    registry = Registry("engage")

    @registry.task("ai.engage")
    async def engage(params: EngageParams, job: Any) -> None: ...

    with pytest.raises(MissingHandlers, match=r"followup\.bumpup") as refused:
        registry.bind()
    assert "ai.summary" in str(refused.value) and "ai.engage" not in str(refused.value)


def test_handlers_that_break_the_contract_are_refused_when_registered() -> None:
    registry = Registry("engage")
    with pytest.raises(TypeError, match=r"contract of 'ai\.engage' is EngageParams"):

        @registry.task("ai.engage")
        async def wrong(params: SummaryParams, job: Any) -> None: ...

    with pytest.raises(TypeError, match="belongs to 'dispatch'"):
        registry.task("dispatch.send")

    @registry.task("ai.summary")
    async def summary(params: SummaryParams, job: Any) -> None: ...

    with pytest.raises(TypeError, match="two handlers"):

        @registry.task("ai.summary")
        async def again(params: SummaryParams, job: Any) -> None: ...
