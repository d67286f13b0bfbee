"""Ingest's OpenAPI document: every JSON request body and every 2xx JSON answer has an
example, and every example in the document validates against its own schema."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from shvya_ingest.app import create_app
from shvya_ingest.settings import IngestSettings

SECRET_LOOKING = ("sk-", "-----BEGIN", "AKIA", "xoxb-", "ghp_")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    settings = IngestSettings(  # type: ignore[call-arg]
        _env_file=None,
        admin_token=secrets.token_urlsafe(24),
        link_secret=secrets.token_urlsafe(48),
        console_enabled=True,
    )
    return create_app(settings).openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def json_media(operation: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(what it is, its media object) for the JSON request body and each 2xx JSON answer."""
    for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
        if "json" in media_type:
            yield "request body", media
    for status, response in operation.get("responses", {}).items():
        if status.startswith("2"):
            for media_type, media in response.get("content", {}).items():
                if "json" in media_type:
                    yield f"{status} answer", media


def resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema a `$ref` (or an optional body's `anyOf [$ref, null]`) points at."""
    branches = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if len(branches) == 1 and "$ref" in branches[0]:
        schema = branches[0]
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def has_example(document: dict[str, Any], media: dict[str, Any]) -> bool:
    if "example" in media or media.get("examples"):
        return True
    return bool(resolved(document, media.get("schema", {})).get("examples"))


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of `schema` whose `#/components/...` references resolve in the document."""
    return Draft202012Validator(
        {**schema, "components": document["components"]},
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def every_example(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(where, schema, example) for each example in the document: on a component schema, on an
    inline schema of a body or answer, and on a media object."""
    for name, schema in document["components"]["schemas"].items():
        for n, example in enumerate(schema.get("examples", [])):
            yield f"components.schemas.{name} example {n}", schema, example
    for where, operation in operations(document):
        for what, media in json_media(operation):
            schema = media.get("schema", {})
            if "$ref" not in schema:
                for n, example in enumerate(schema.get("examples", [])):
                    yield f"{where} {what} schema example {n}", schema, example
            if "example" in media:
                yield f"{where} {what} example", schema, media["example"]
            for name, example in media.get("examples", {}).items():
                yield f"{where} {what} example {name!r}", schema, example.get("value")


def test_every_json_body_and_success_answer_has_an_example(document):
    """Each operation's JSON request body and 2xx JSON answer carries an example (on the media
    object or on the schema it refers to); the failure names each one that does not."""
    missing = [
        f"{where}: {what}"
        for where, operation in operations(document)
        for what, media in json_media(operation)
        if not has_example(document, media)
    ]
    assert not missing, f"{len(missing)} without an example:\n" + "\n".join(missing)


def test_every_example_validates_against_its_own_schema(document):
    """Every example in the document (components, inline schemas, media objects) is valid for
    the schema it illustrates, formats (uuid, date-time) included."""
    broken = []
    checked = 0
    for where, schema, example in every_example(document):
        checked += 1
        errors = list(validator(document, schema).iter_errors(example))
        broken += [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    assert checked >= 100
    assert not broken, f"{len(broken)} invalid examples:\n" + "\n".join(broken)


def test_no_example_looks_like_a_real_secret(document):
    """No example carries something shaped like a live credential (an OpenAI, AWS, Slack or
    GitHub token, a PEM key)."""
    found = [
        (where, marker)
        for where, _, example in every_example(document)
        for marker in SECRET_LOOKING
        if marker in repr(example)
    ]
    assert not found
