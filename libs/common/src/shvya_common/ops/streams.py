"""`shvya streams` and `shvya consumers`: JetStream's view of the job bus (messages, pending,
ack pending and redeliveries per consumer), the `nats stream ls` / `nats consumer ls` of the
embedded default."""

from __future__ import annotations

import argparse

from nats.js.errors import NotFoundError as JsNotFound

from shvya_common.contracts.subjects import Topology
from shvya_common.ops.base import EXIT_OK, NotFound, Row, emit, jetstream, table
from shvya_common.settings import CommonSettings


async def streams(args: argparse.Namespace, settings: CommonSettings) -> int:
    topology = Topology(settings.nats_prefix)
    rows: list[Row] = []
    async with jetstream(settings) as (_, js):
        for name in (topology.jobs_stream, topology.dlq_stream):
            try:
                info = await js.stream_info(name)
            except JsNotFound:
                rows.append({"stream": name, "status": "missing (services create it at start-up)"})
                continue
            state, config = info.state, info.config
            rows.append(
                {
                    "stream": name,
                    "subjects": ", ".join(config.subjects or []),
                    "retention": str(getattr(config.retention, "value", config.retention) or ""),
                    "messages": state.messages,
                    "bytes": state.bytes,
                    "consumers": state.consumer_count,
                    "status": "ok",
                }
            )
    columns = ["stream", "subjects", "retention", "messages", "bytes", "consumers", "status"]
    emit(args, rows, table(rows, columns))
    return EXIT_OK


async def consumers(args: argparse.Namespace, settings: CommonSettings) -> int:
    topology = Topology(settings.nats_prefix)
    rows: list[Row] = []
    async with jetstream(settings) as (_, js):
        try:
            infos = await js.consumers_info(topology.jobs_stream)
        except JsNotFound as err:
            raise NotFound(
                f"no stream {topology.jobs_stream}: the services create it at start-up"
            ) from err
        for info in sorted(infos, key=lambda i: i.name):
            config = info.config
            subjects = config.filter_subjects or [config.filter_subject or ""]
            rows.append(
                {
                    "consumer": info.name,
                    "subjects": ", ".join(s for s in subjects if s),
                    "pending": info.num_pending,
                    "ack_pending": info.num_ack_pending,
                    "redelivered": info.num_redelivered,
                    "waiting": info.num_waiting,
                }
            )
    if args.service:
        rows = [r for r in rows if r["consumer"].startswith(f"{args.service}-p")]
    columns = ["consumer", "pending", "ack_pending", "redelivered", "waiting", "subjects"]
    emit(args, rows, table(rows, columns))
    return EXIT_OK
