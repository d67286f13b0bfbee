"""The AsyncAPI 3 document of SHVYA's messages, generated from the contracts.

One channel per task (`TASKS`) on its job subject `<prefix>.jobs.p<level>.<task>.<id>` in the
work-queue stream, whose message is the `JobEnvelope` with that task's params model (their
pydantic JSON schemas); a receive operation per task for the owning service's durable consumers
(`Topology.consumer_name`) and a send operation for whoever enqueues it; the dead-letter channel
`<prefix>.dlq.<task>`; and the outbound webhooks a company's endpoints receive, whose `type` is
one of the public `EventType`s. Served by ingest at `/asyncapi.json` and printed by
`shvya asyncapi`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from shvya_common.contracts.events import PUBLIC_EVENTS, EventType
from shvya_common.contracts.jobs import TASKS, JobEnvelope, TaskSpec
from shvya_common.contracts.subjects import PRIORITY_LEVELS, Topology, priority_level

ASYNCAPI_VERSION = "3.0.0"
REF = "#/components/schemas/{model}"
Json = dict[str, Any]


class DeadLetter(BaseModel):
    """What the worker copies to the dead-letter stream when a job or send is dead-lettered
    (the row, with status dlq, stays the record that replay reads)."""

    envelope: JobEnvelope | None = Field(description="The message; null when it was unreadable.")
    error: str = Field(description="Why it was dead-lettered.")
    attempts: int
    service: str = Field(description="The service whose worker dead-lettered it.")
    subject: str = Field(description="The job subject it arrived on.")
    dead_at: datetime
    raw: str | None = Field(None, description="Base64 of an unreadable message (first 64 KiB).")


class WebhookEvent(BaseModel):
    """The body POSTed to a company's webhook endpoint (Standard Webhooks shape)."""

    type: EventType = Field(description="One of the public event types.")
    timestamp: datetime
    data: dict[str, Any] = Field(description="The event's payload, with company_id and lead_id.")


def _schemas() -> Json:
    models: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (JobEnvelope, "validation"),
        (DeadLetter, "validation"),
        (WebhookEvent, "validation"),
    ]
    models += [(s.params, "validation") for s in TASKS.values() if s.params is not None]
    _, defs = models_json_schema(models, ref_template=REF)
    schemas: Json = defs.get("$defs", {})
    public = sorted(e.value for e in PUBLIC_EVENTS)
    schemas["EventType"] = {
        "type": "string",
        "enum": sorted(e.value for e in EventType),
        "description": "Every event type of the audit trail; endpoints may subscribe to "
        f"these: {', '.join(public)}.",
    }
    schemas["WebhookEvent"]["properties"]["type"] = {
        "type": "string",
        "enum": public,
        "description": "One of the public event types (EventType).",
    }
    return schemas


def _key(task: str) -> str:
    return task.replace(".", "_")


def _levels(spec: TaskSpec) -> list[str]:
    # A send inherits its parent's priority, so it may travel at any level.
    levels = PRIORITY_LEVELS if spec.ledger == "messages" else (priority_level(spec.priority),)
    return [f"p{level}" for level in levels]


def _task_message(spec: TaskSpec) -> Json:
    params = {"$ref": REF.format(model=spec.params.__name__)} if spec.params else {"type": "object"}
    return {
        "name": spec.name,
        "title": f"{spec.name} job",
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "properties": {
                "Nats-Msg-Id": {
                    "type": "string",
                    "description": "<row id>:<generation>; JetStream drops a repeat in the"
                    " duplicate window.",
                },
                "traceparent": {
                    "type": "string",
                    "description": "W3C trace context, when tracing is on.",
                },
            },
            "required": ["Nats-Msg-Id"],
        },
        "payload": {
            "allOf": [
                {"$ref": REF.format(model="JobEnvelope")},
                {
                    "type": "object",
                    "properties": {"task": {"const": spec.name}, "params": params},
                },
            ]
        },
    }


def asyncapi_document(prefix: str = "shvya", nats_url: str = "nats://127.0.0.1:4222") -> Json:
    """The AsyncAPI 3 document for an install with subject prefix `prefix`."""
    topology = Topology(prefix)
    host = nats_url.split("://", 1)[-1].rsplit("@", 1)[-1]
    channels: Json = {}
    operations: Json = {}
    messages: Json = {}
    for spec in TASKS.values():
        key = _key(spec.name)
        messages[key] = _task_message(spec)
        levels = _levels(spec)
        consumers = ", ".join(
            topology.consumer_name(spec.service, int(level[1:])) for level in levels
        )
        channels[key] = {
            "address": f"{prefix}.jobs.{{level}}.{spec.name}.{{id}}",
            "title": spec.name,
            "description": (
                f"Jobs of task {spec.name} (default priority {spec.priority}) in stream"
                f" {topology.jobs_stream}, a work queue: a message is removed once acked. Its"
                f" record is a {'jobs' if spec.ledger == 'jobs' else 'outbound messages'} row."
            ),
            "parameters": {
                "level": {
                    "enum": levels,
                    "description": "The priority level: the highest of "
                    f"{', '.join(map(str, PRIORITY_LEVELS))} not above the job's priority.",
                },
                "id": {"description": "The job's id (for a send, its outbound message's id)."},
            },
            "servers": [{"$ref": "#/servers/nats"}],
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        }
        operations[f"run_{key}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{key}"},
            "title": f"{spec.service} runs {spec.name}",
            "description": f"Pulled by {spec.service}'s durable consumers ({consumers}),"
            " highest level first; acked after the outcome is recorded.",
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
        }
        operations[f"enqueue_{key}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "title": f"enqueue {spec.name}",
            "description": "Published after the row's COMMIT; republished by the relay or the"
            " reconciler when that publish was lost.",
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
        }
    messages["dead_letter"] = {
        "name": "dead_letter",
        "contentType": "application/json",
        "payload": {"$ref": REF.format(model="DeadLetter")},
    }
    channels["dead_letters"] = {
        "address": f"{prefix}.dlq.{{task}}",
        "title": "dead letters",
        "description": f"Stream {topology.dlq_stream} (limits retention, 30 days): a copy of each"
        " dead-lettered job or send, for inspection; replay reads the rows.",
        "parameters": {
            "task": {
                "enum": [*sorted(TASKS), "invalid"],
                "description": "The task, or `invalid` for an unreadable message.",
            }
        },
        "servers": [{"$ref": "#/servers/nats"}],
        "messages": {"dead_letter": {"$ref": "#/components/messages/dead_letter"}},
    }
    operations["dead_letter"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/dead_letters"},
        "title": "dead-letter a job or send",
        "messages": [{"$ref": "#/channels/dead_letters/messages/dead_letter"}],
    }
    messages["webhook_event"] = {
        "name": "webhook_event",
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "properties": {
                "webhook-id": {"type": "string", "description": "The event's id."},
                "webhook-timestamp": {"type": "string"},
                "webhook-signature": {"type": "string"},
            },
        },
        "payload": {"$ref": REF.format(model="WebhookEvent")},
    }
    channels["webhooks"] = {
        "address": None,
        "title": "outbound webhooks",
        "description": "A company's webhook endpoint (its URL), delivered by dispatch's"
        " webhook.reminder jobs and signed per Standard Webhooks.",
        "servers": [{"$ref": "#/servers/webhook-endpoint"}],
        "messages": {"webhook_event": {"$ref": "#/components/messages/webhook_event"}},
    }
    operations["deliver_webhook"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/webhooks"},
        "title": "deliver an event to a subscribed endpoint",
        "messages": [{"$ref": "#/channels/webhooks/messages/webhook_event"}],
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "SHVYA job bus",
            "version": "0.1.0",
            "description": "The subjects and streams the four services talk over (NATS"
            " JetStream), and the outbound webhooks. Generated from shvya_common.contracts.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": host,
                "protocol": "nats",
                "description": "NATS with JetStream: streams "
                f"{topology.jobs_stream} and {topology.dlq_stream}.",
            },
            "webhook-endpoint": {
                "host": "example.com",
                "protocol": "https",
                "description": "A company's webhook endpoint, as registered.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": _schemas(), "messages": messages},
    }
