"""Handlers declared where they are defined: task, params model and retry policy side by side.

    registry = Registry("engage")

    @registry.task("ai.engage", retry=RetryPolicy(non_retryable=(BadRequestError,)))
    async def handle_engage(params: EngageParams, job: JobContext, deps: Deps) -> dict: ...

The params model is read from the handler's first parameter annotation and must be the one
the contracts declare for the task, so the two cannot drift apart. `Registry.check()` runs at
start-up: a service that lacks a handler for a task the contracts give it refuses to start
(faststream's `@broker.subscriber` and temporalio's activity registration work the same way).
A retry policy follows Temporal's `RetryPolicy`: its own schedule of delays, and error types
that are never retried; by default the service's `RETRY_SCHEDULE` (5, 20, 60, 180, 600 s),
optionally with jitter.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from shvya_common.contracts.jobs import TASKS, TaskSpec, task_spec


@dataclass(frozen=True)
class RetryPolicy:
    """How a task retries: `schedule` (seconds before each retry; None = the service's
    RETRY_SCHEDULE), exception types that dead-letter at once, and `jitter`, the fraction by
    which each delay may randomly grow or shrink (0.2: 80–120 % of it), so retries of many jobs
    that failed together do not all come back at the same moment."""

    schedule: tuple[float, ...] | None = None
    non_retryable: tuple[type[BaseException], ...] = ()
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter is a fraction in [0, 1), not {self.jitter}")

    def delays(self, default: list[float]) -> list[float]:
        return list(self.schedule) if self.schedule is not None else list(default)


Handler = Callable[..., Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True)
class Registration:
    """One task's handler, ready to run: `handler(params, job)`."""

    spec: TaskSpec
    handler: Handler
    params: type[BaseModel] | None
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class MissingHandlers(RuntimeError):
    """The contracts give a service tasks it has no handler for."""


def params_model(func: Callable[..., object]) -> type[BaseModel] | None:
    """The pydantic model of a handler's first parameter, or None for a plain dict."""
    first = next(iter(inspect.signature(func).parameters), None)
    if first is None:
        raise TypeError(f"handler {func.__qualname__} takes no parameters")
    hint = typing.get_type_hints(func).get(first)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    return None


class Registry:
    """The tasks one service runs."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._entries: dict[str, tuple[Handler, type[BaseModel] | None, RetryPolicy]] = {}

    def task(self, name: str, *, retry: RetryPolicy | None = None) -> Callable[[Handler], Handler]:
        spec = task_spec(name)
        if spec.service != self.service:
            raise TypeError(f"task {name!r} belongs to {spec.service!r}, not {self.service!r}")

        def register(func: Handler) -> Handler:
            model = params_model(func)
            if model is not spec.params:
                raise TypeError(
                    f"handler {func.__qualname__} takes {model and model.__name__} but the "
                    f"contract of {name!r} is {spec.params and spec.params.__name__}"
                )
            if name in self._entries:
                raise TypeError(f"task {name!r} has two handlers in {self.service!r}")
            self._entries[name] = (func, model, retry or RetryPolicy())
            return func

        return register

    def check(self) -> None:
        """Refuse to start when a task of the contracts has no handler here."""
        mine = {name for name, spec in TASKS.items() if spec.service == self.service}
        missing = sorted(mine - set(self._entries))
        if missing:
            raise MissingHandlers(
                f"service {self.service!r} has no handler for {', '.join(missing)}: every task"
                " in shvya_common.contracts.jobs.TASKS needs one in its service"
            )

    @property
    def tasks(self) -> list[str]:
        return sorted(self._entries)

    def bind(self, **deps: Any) -> dict[str, Registration]:
        """The registrations with the service's dependencies bound: each handler gets the ones
        its signature names (`deps=...`, `media=...`)."""
        self.check()
        out = {}
        for name, (func, model, retry) in self._entries.items():
            wanted = inspect.signature(func).parameters
            given = {k: v for k, v in deps.items() if k in wanted}
            out[name] = Registration(
                task_spec(name), functools.partial(func, **given), model, retry
            )
        return out


def plain(
    handlers: dict[str, Handler], retry: RetryPolicy | None = None
) -> dict[str, Registration]:
    """Registrations for handlers given as a dict (tests, one-off workers)."""
    out = {}
    for name, handler in handlers.items():
        spec = task_spec(name)
        out[name] = Registration(spec, handler, spec.params, retry or RetryPolicy())
    return out
