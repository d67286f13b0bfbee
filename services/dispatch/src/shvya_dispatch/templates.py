"""Message templates filled from lead data: which values go into a template's {{1}}, {{2}}, ...

A `templates` row lists its variables in order (`variables` jsonb). Each entry is a lead field
name — `contact_name`, `first_name`, `last_name`, `phone` (E.164), `email`, `company_name`, or a
key of `leads.attributes` (also written `attributes.<key>`) — or an object
`{"field": "first_name", "default": "there"}` whose default is used when the lead lacks the field.
Explicit `SendParams.template_params` win over the variables. WhatsApp refuses a template whose
parameter count differs from its body (error 132000), so a mismatch is caught here, before any
request, as is a lead that lacks a field with no default.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shvya_common.errors import PermanentError

_PLACEHOLDER = re.compile(r"\{\{\s*(\d+)\s*\}\}")
# Channel names a WhatsApp template row may carry.
WHATSAPP_TEMPLATE_CHANNELS = ("whatsapp_cloud", "whatsapp")


@dataclass(frozen=True)
class RenderedTemplate:
    """A template ready to send: its identity at the provider and its filled body."""

    id: uuid.UUID
    name: str
    language: str
    channel: str
    status: str
    parameters: tuple[str, ...]
    # The body with the parameters in place: what the lead will read.
    text: str


class TemplateStore(Protocol):
    async def template_for_lead(
        self, company_id: uuid.UUID, lead_id: uuid.UUID, template_id: uuid.UUID
    ) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
        """The template row and the lead's fields (with `company_name`), or None."""
        ...


def _clean(value: Any) -> str:
    # WhatsApp rejects parameters with newlines, tabs or long runs of spaces.
    return " ".join(str(value).split())


def lead_fields(lead: Mapping[str, Any]) -> dict[str, str]:
    """The values a template variable may name, from a lead row (plus `company_name`)."""
    fields: dict[str, str] = {}
    attributes = lead.get("attributes") or {}
    for key, value in attributes.items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            fields[key] = fields[f"attributes.{key}"] = _clean(value)
    name = _clean(lead.get("contact_name") or "")
    first, _, last = name.partition(" ")
    core = {
        "contact_name": name,
        "first_name": first,
        "last_name": last,
        "phone": lead.get("phone_e164") or "",
        "phone_e164": lead.get("phone_e164") or "",
        "email": lead.get("email") or "",
        "company_name": _clean(lead.get("company_name") or ""),
    }
    fields.update({k: v for k, v in core.items() if v})
    return {k: v for k, v in fields.items() if v}


def placeholder_count(body: str) -> int:
    """How many parameters a body takes: its highest {{n}}."""
    return max((int(n) for n in _PLACEHOLDER.findall(body)), default=0)


def render_body(body: str, parameters: Sequence[str]) -> str:
    def one(match: re.Match[str]) -> str:
        index = int(match.group(1)) - 1
        return parameters[index] if 0 <= index < len(parameters) else match.group(0)

    return _PLACEHOLDER.sub(one, body)


def fill_parameters(
    variables: Sequence[Any], fields: Mapping[str, str], template_name: str
) -> list[str]:
    values: list[str] = []
    for position, variable in enumerate(variables, start=1):
        if isinstance(variable, str):
            field, default = variable, None
        elif isinstance(variable, Mapping) and isinstance(variable.get("field"), str):
            field, default = variable["field"], variable.get("default")
        else:
            raise PermanentError(
                f"template {template_name!r} variable {position} is not a field name: {variable!r}"
            )
        value = fields.get(field) or (_clean(default) if default is not None else "")
        if not value:
            raise PermanentError(
                f"template {template_name!r} needs {field!r} ({{{{{position}}}}}), "
                "which this lead does not have"
            )
        values.append(value)
    return values


def render_template(
    row: Mapping[str, Any], lead: Mapping[str, Any], explicit: Sequence[str] = ()
) -> RenderedTemplate:
    """Fill a template row for a lead; explicit parameters replace the variables."""
    name = row["name"]
    if explicit:
        parameters = [_clean(p) for p in explicit]
    else:
        parameters = fill_parameters(row["variables"] or [], lead_fields(lead), name)
    expected = placeholder_count(row["body"])
    if len(parameters) != expected:
        raise PermanentError(
            f"template {name!r} takes {expected} parameter(s), {len(parameters)} given"
        )
    return RenderedTemplate(
        id=row["id"],
        name=name,
        language=row["language"],
        channel=row["channel"],
        status=row["status"],
        parameters=tuple(parameters),
        text=render_body(row["body"], parameters),
    )


class TemplateRenderer:
    """Loads a company's template and the lead's data, and fills one from the other."""

    def __init__(self, store: TemplateStore) -> None:
        self.store = store

    async def render(
        self,
        company_id: uuid.UUID,
        lead_id: uuid.UUID,
        template_id: uuid.UUID,
        explicit: Sequence[str] = (),
    ) -> RenderedTemplate:
        found = await self.store.template_for_lead(company_id, lead_id, template_id)
        if found is None:
            raise PermanentError(f"template {template_id} not found for this company and lead")
        row, lead = found
        return render_template(row, lead, explicit)
