"""Example values for the OpenAPI document: one company's ids, a contact, an address and a few
times, shared by every model's `examples`, so the lead in one answer's example is the lead in
the next; and the helpers that put an example on a model, a list answer and a page. Every
example validates against its own schema (tests/unit/test_openapi_examples.py), and none holds
a real secret: keys and tokens here are visibly made up."""

from __future__ import annotations

from typing import Any

COMPANY_ID = "0190f3a2-7c41-7d2e-9b0a-3c5e8f1a2b40"
USER_ID = "0190f3a2-8a10-7e55-8c21-5d6e7f8a9b01"
KEY_ID = "0190f3a2-8b22-7f01-a3b4-6c7d8e9f0a12"
PIPELINE_ID = "0190f3a3-0a11-7b22-8c33-4d5e6f708192"
STAGE_IDS = (
    "0190f3a3-0b01-7c12-9d23-5e6f708192a3",
    "0190f3a3-0b02-7c12-9d23-5e6f708192a4",
    "0190f3a3-0b03-7c12-9d23-5e6f708192a5",
)
LEAD_ID = "0190f3b0-1c2d-7e3f-8a4b-5c6d7e8f9a0b"
DUPLICATE_LEAD_ID = "0190f3b0-2d3e-7f40-9b5c-6d7e8f9a0b1c"
MESSAGE_ID = "0190f3b1-3e4f-7051-8c6d-7e8f9a0b1c2d"
JOB_ID = "0190f3b1-4f50-7162-9d7e-8f9a0b1c2d3e"
EVENT_ID = "0190f3b1-5061-7273-ae8f-9a0b1c2d3e4f"
TEMPLATE_ID = "0190f3c0-6172-7384-8f90-a0b1c2d3e4f5"
ACCOUNT_ID = "0190f3c0-7283-7495-9a01-b1c2d3e4f506"
SUPPRESSION_ID = "0190f3c0-8394-75a6-ab12-c2d3e4f50617"
SEQUENCE_ID = "0190f3d0-94a5-76b7-8c23-d3e4f5061728"
STEP_IDS = (
    "0190f3d0-a5b6-77c8-9d34-e4f506172839",
    "0190f3d0-a5b7-77c8-9d34-e4f50617283a",
)
ENROLMENT_ID = "0190f3d1-b6c7-78d9-ae45-f5061728394a"
ENDPOINT_ID = "0190f3e0-c7d8-79ea-8f56-061728394a5b"
DELIVERY_ID = "0190f3e0-d8e9-7afb-9067-1728394a5b6c"
DOC_ID = "0190f3f0-e9fa-7b0c-a178-28394a5b6c7d"
CHUNK_ID = "0190f3f0-fa0b-7c1d-b289-394a5b6c7d8e"
CAMPAIGN_ID = "0190f400-0b1c-7d2e-839a-4a5b6c7d8e9f"
SCHEDULE_ID = "0190f400-1c2d-7e3f-94ab-5b6c7d8e9fa0"
REMINDER_ID = "0190f400-2d3e-7f40-a5bc-6c7d8e9fa0b1"
MAILBOX_ID = "0190f400-3e4f-7051-b6cd-7d8e9fa0b1c2"

CONTACT = "Ana Silva"
PHONE = "+14155550123"
EMAIL = "ana.silva@example.com"
AGENT_EMAIL = "rita@acme.example"
TIMEZONE = "Europe/Berlin"
# A lead's contact fields as answers show them.
CONTACT_FIELDS = {"contact_name": CONTACT, "phone_e164": PHONE, "email": EMAIL}

CREATED = "2026-05-04T09:30:00Z"
UPDATED = "2026-05-04T10:15:00Z"
LATER = "2026-05-05T08:00:00Z"

# Shaped like the real thing, visibly not one (base64 of "EXAMPLE-not-a-real-secret").
WEBHOOK_SECRET = "whsec_RVhBTVBMRS1ub3QtYS1yZWFsLXNlY3JldA=="

# What the email webhooks answer for a filed email (as POST /webhooks/email does).
EMAIL_FILED = {"status": "ok", "kind": "filed", "message_id": MESSAGE_ID, "job_id": JOB_ID}


def answer(example: Any, status: int = 200, **response: Any) -> dict[int | str, dict[str, Any]]:
    """`responses=` giving a route's JSON answer an example (where no model carries one)."""
    return {status: {**response, "content": {"application/json": {"example": example}}}}


def examples(*items: Any) -> dict[str, Any]:
    """A model's `json_schema_extra`: its examples, first the one a reader sees."""
    return {"examples": list(items)}


def example_of(model: Any) -> Any:
    """The first example declared on a pydantic model (to build a larger model's from it)."""
    return model.model_config["json_schema_extra"]["examples"][0]


def listed(model: Any, status: int = 200) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route answering a JSON list of `model`: one item's example."""
    return {status: {"content": {"application/json": {"example": [example_of(model)]}}}}


def page_example(schema: dict[str, Any], cls: Any) -> None:
    """`json_schema_extra` of the generic Page: a page of one of its item model's examples."""
    args = getattr(cls, "__pydantic_generic_metadata__", {}).get("args", ())
    if args and "json_schema_extra" in getattr(args[0], "model_config", {}):
        schema["examples"] = [{"items": [example_of(args[0])], "next_cursor": None}]


def with_nulls(document: dict[str, Any]) -> dict[str, Any]:
    """Put back the nulls FastAPI takes out of the document. It encodes the whole document
    without None values, examples included, so an answer's example loses its required
    nullable fields (`"handoff_at": null`) and no longer validates against its own schema.
    Each example is walked beside its schema and a required, nullable field it lacks is set
    to null again."""
    for schema in document.get("components", {}).get("schemas", {}).values():
        for example in schema.get("examples", []):
            _fill(document, schema, example)
    for item in document.get("paths", {}).values():
        for operation in item.values():
            bodies = [operation.get("requestBody", {}), *operation.get("responses", {}).values()]
            for body in bodies:
                for media in body.get("content", {}).values():
                    schema = media.get("schema", {})
                    values = [media.get("example"), *schema.get("examples", [])]
                    values += [e.get("value") for e in media.get("examples", {}).values()]
                    for value in values:
                        _fill(document, schema, value)
    return document


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _nullable(document: dict[str, Any], schema: dict[str, Any]) -> bool:
    schema = _resolve(document, schema)
    branches = schema.get("anyOf", []) + schema.get("oneOf", [])
    return schema.get("type") == "null" or any(b.get("type") == "null" for b in branches)


def _fill(document: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    schema = _resolve(document, schema)
    branches = [_resolve(document, b) for b in schema.get("anyOf", []) + schema.get("oneOf", [])]
    if isinstance(value, dict):
        # The branch of a union the example is of: the one that names every key it has.
        fitting = [b for b in branches if "properties" in b and set(value) <= set(b["properties"])]
        schema = fitting[0] if fitting else schema
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value and _nullable(document, properties.get(name, {})):
                value[name] = None
        for name, sub in properties.items():
            if name in value:
                _fill(document, sub, value[name])
    elif isinstance(value, list):
        items = next((b["items"] for b in [schema, *branches] if "items" in b), None)
        if items is not None:
            for item in value:
                _fill(document, items, item)
