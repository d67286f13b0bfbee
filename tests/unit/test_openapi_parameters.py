"""Ingest's OpenAPI document: every path, query and header parameter of every operation says
what it is (what it identifies or filters, its format, its bounds), so a client reads the
document instead of the code."""

from __future__ import annotations

from typing import Any

from tests.unit import test_openapi_examples as openapi
from tests.unit.test_openapi_examples import operations

# The same module-scoped fixture: one app and one document for these tests.
document = openapi.document


def parameters(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{where}: {parameter['in']} {parameter['name']}", parameter)
        for where, operation in operations(document)
        for parameter in operation.get("parameters", [])
    ]


def test_every_parameter_has_a_description(document):
    """Each operation's parameters carry a non-empty description; the failure names each one
    that does not."""
    found = parameters(document)
    missing = [where for where, p in found if not str(p.get("description", "")).strip()]
    assert len(found) >= 150
    assert not missing, f"{len(missing)} without a description:\n" + "\n".join(missing)
