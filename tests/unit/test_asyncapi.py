"""The AsyncAPI document generated from the contracts: valid AsyncAPI 3.0.0, every task in it."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft7Validator

from shvya_common.asyncapi import asyncapi_document
from shvya_common.contracts.events import PUBLIC_EVENTS
from shvya_common.contracts.jobs import TASKS

SCHEMA = Path(__file__).parents[1] / "fixtures" / "asyncapi" / "3.0.0-without-id.json"


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(document: dict, ref: str) -> object:
    node: object = document
    for part in ref.removeprefix("#/").split("/"):
        assert isinstance(node, dict) and part in node, ref
        node = node[part]
    return node


def test_the_document_validates_against_the_asyncapi_3_schema():
    """The generated document passes the official AsyncAPI 3.0.0 JSON Schema."""
    document = asyncapi_document("acme", "nats://user:pw@nats.example:4222")
    validator = Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    assert document["servers"]["nats"]["host"] == "nats.example:4222"  # no credentials


def test_every_task_has_a_channel_its_params_schema_and_a_consumer():
    """Each task of the contracts has a channel on its job subject, a message whose params are
    the task's params model, and a receive operation naming its service's consumers."""
    document = asyncapi_document("acme")
    for name, spec in TASKS.items():
        key = name.replace(".", "_")
        channel = document["channels"][key]
        assert channel["address"] == f"acme.jobs.{{level}}.{name}.{{id}}"
        payload = document["components"]["messages"][key]["payload"]["allOf"][1]
        assert payload["properties"]["task"] == {"const": name}
        if spec.params is not None:
            assert spec.params.__name__ in document["components"]["schemas"]
        receive = document["operations"][f"run_{key}"]
        assert receive["action"] == "receive" and f"{spec.service}-p" in receive["description"]
    assert document["channels"]["dead_letters"]["address"] == "acme.dlq.{task}"
    webhook = document["components"]["schemas"]["WebhookEvent"]["properties"]["type"]
    assert set(webhook["enum"]) == {e.value for e in PUBLIC_EVENTS}


def test_every_reference_in_the_document_resolves():
    """No $ref points at a component that is not in the document."""
    document = asyncapi_document()
    for ref in _refs(document):
        _resolve(document, ref)
