"""Imports every module that registers a scheduler task or an event-feed reactor, so that
`registry.bind` and the feed see them all (the import is the registration)."""

from __future__ import annotations

MODULES: tuple[str, ...] = (
    "shvya_scheduler.webhook_fanout",
    "shvya_scheduler.sequences",
    "shvya_scheduler.sequence_stops",
    "shvya_scheduler.campaigns",
    "shvya_scheduler.reports",
)


def load() -> None:
    import importlib

    for name in MODULES:
        importlib.import_module(name)
