"""Message templates filled from lead data: body, header and button parameters, checked against
the template's definition before any request.

A `templates` row names its template at Meta (`name`, `language`), keeps Meta's definition in
`components` (synced from Graph: HEADER with a format, BODY text, BUTTONS) and binds parameters
to lead data in `variables`:

- a list fills the body's positional `{{1}}`, `{{2}}`, ... in order (the original form);
- an object binds each part:
      {"body": {"first_name": "first_name"},             # named {{first_name}}; or a list
       "header": {"link": "https://.../offer.jpg"},        # image/video/document: link or id
       "buttons": [{"index": 0, "value": "attributes.order_id"},   # URL suffix, copy code
                   {"index": 1, "payload": "STOP_PROMOS"}]}        # quick-reply payload

A value is a lead field name — `contact_name`, `first_name`, `last_name`, `phone`, `email`,
`company_name`, or a key of `leads.attributes` (also `attributes.<key>`) — or
`{"field": ..., "default": ...}`, or a literal `{"value": ...}`. Explicit
`SendParams.template_params` replace the body's positional values.

Graph refuses a template whose parameters do not match its definition (132000 count, 132012
format), so the count, the names, the header's type and each button's type are checked here.
The language follows the lead (`leads.language`), else the company's
`whatsapp_template_fallback_language`, else the row asked for; only approved rows are chosen.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shvya_common.errors import PermanentError
from shvya_common.whatsapp.templates import SENDABLE, WHATSAPP_TEMPLATE_CHANNELS

__all__ = ["WHATSAPP_TEMPLATE_CHANNELS", "RenderedTemplate", "TemplateRenderer", "render_template"]

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
MEDIA_HEADERS = ("IMAGE", "VIDEO", "DOCUMENT")


@dataclass(frozen=True)
class RenderedTemplate:
    """A template ready to send: its identity at the provider and its filled content."""

    id: uuid.UUID
    name: str
    language: str
    channel: str
    status: str
    # The body's values, in order (for the record and the original positional form).
    parameters: tuple[str, ...]
    # The header and body with their values in place: what the lead will read.
    text: str
    # Graph's `template.components` for the send; None means "body parameters only".
    components: tuple[dict[str, Any], ...] | None = None
    details: dict[str, Any] = field(default_factory=dict)


class TemplateStore(Protocol):
    async def template_choices(
        self, company_id: uuid.UUID, lead_id: uuid.UUID, template_id: uuid.UUID
    ) -> tuple[Mapping[str, Any], list[Mapping[str, Any]], Mapping[str, Any]] | None:
        """(the template row asked for, its approved rows in every language, the lead's fields
        with `company_name`, `language` and `fallback_language`), or None."""
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


def placeholders(text: str) -> list[str]:
    """The placeholders of a text, each once, in order of first appearance."""
    seen: list[str] = []
    for name in _PLACEHOLDER.findall(text or ""):
        if name not in seen:
            seen.append(name)
    return seen


def placeholder_count(body: str) -> int:
    """How many positional parameters a body takes: its highest {{n}}."""
    return max((int(n) for n in placeholders(body) if n.isdigit()), default=0)


def fill(text: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def render_body(body: str, parameters: Sequence[str]) -> str:
    return fill(body, {str(i): v for i, v in enumerate(parameters, start=1)})


def _value(spec: Any, fields: Mapping[str, str], name: str, where: str) -> str:
    if isinstance(spec, str):
        field_name, default = spec, None
    elif isinstance(spec, Mapping) and "value" in spec:
        value = _clean(spec["value"])
        if not value:
            raise PermanentError(f"template {name!r} {where} has an empty literal value")
        return value
    elif isinstance(spec, Mapping) and isinstance(spec.get("field"), str):
        field_name, default = spec["field"], spec.get("default")
    else:
        raise PermanentError(f"template {name!r} {where} is not a field name: {spec!r}")
    value = fields.get(field_name) or (_clean(default) if default is not None else "")
    if not value:
        raise PermanentError(
            f"template {name!r} needs {field_name!r} ({where}), which this lead does not have"
        )
    return value


def fill_parameters(
    variables: Sequence[Any], fields: Mapping[str, str], template_name: str
) -> list[str]:
    return [
        _value(v, fields, template_name, f"{{{{{n}}}}}") for n, v in enumerate(variables, start=1)
    ]


def _component(definition: Sequence[Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    for component in definition:
        if str(component.get("type", "")).upper() == kind:
            return component
    return None


def _text_parameters(
    text: str, spec: Any, fields: Mapping[str, str], name: str, part: str, named: bool
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Text parameters for a header or body, and the values by placeholder."""
    wanted = placeholders(text)
    if not wanted:
        if spec:
            raise PermanentError(f"template {name!r} {part} takes no parameters")
        return [], {}
    if named:
        if not isinstance(spec, Mapping) or set(spec) != set(wanted):
            given = sorted(spec) if isinstance(spec, Mapping) else spec
            raise PermanentError(
                f"template {name!r} {part} takes parameters {wanted}, bound: {given!r}"
            )
        values = {p: _value(spec[p], fields, name, f"{part} {{{{{p}}}}}") for p in wanted}
        params = [{"type": "text", "parameter_name": p, "text": values[p]} for p in wanted]
        return params, values
    expected = placeholder_count(text)
    specs = spec if isinstance(spec, list) else [spec] if isinstance(spec, str | Mapping) else []
    if len(specs) != expected:
        raise PermanentError(
            f"template {name!r} {part} takes {expected} parameter(s), {len(specs)} given"
        )
    ordered = [_value(s, fields, name, f"{part} {{{{{n}}}}}") for n, s in enumerate(specs, 1)]
    return [{"type": "text", "text": v} for v in ordered], {
        str(n): v for n, v in enumerate(ordered, 1)
    }


def _header(
    definition: Sequence[Mapping[str, Any]],
    spec: Any,
    fields: Mapping[str, str],
    name: str,
    named: bool,
) -> tuple[dict[str, Any] | None, str]:
    header = _component(definition, "HEADER")
    if header is None:
        if spec:
            raise PermanentError(f"template {name!r} has no header to fill")
        return None, ""
    kind = str(header.get("format") or "TEXT").upper()
    if kind == "TEXT":
        text = str(header.get("text") or "")
        params, values = _text_parameters(text, spec, fields, name, "header", named)
        return ({"type": "header", "parameters": params} if params else None), fill(text, values)
    if kind in MEDIA_HEADERS:
        media = kind.lower()
        if not isinstance(spec, Mapping) or not (spec.get("link") or spec.get("id")):
            raise PermanentError(f"template {name!r} has a {media} header: bind a link or an id")
        obj = {k: str(spec[k]) for k in ("link", "id") if spec.get(k)}
        if kind == "DOCUMENT" and spec.get("filename"):
            obj["filename"] = str(spec["filename"])
        return {"type": "header", "parameters": [{"type": media, media: obj}]}, f"[{media}]"
    if kind == "LOCATION":
        keys = ("latitude", "longitude", "name", "address")
        if not isinstance(spec, Mapping) or not all(spec.get(k) for k in keys[:2]):
            raise PermanentError(f"template {name!r} has a location header: bind its coordinates")
        location = {k: spec[k] for k in keys if spec.get(k) is not None}
        return {"type": "header", "parameters": [{"type": "location", "location": location}]}, ""
    raise PermanentError(f"template {name!r} has a {kind} header, which we cannot fill")


def _buttons(
    definition: Sequence[Mapping[str, Any]], specs: Any, fields: Mapping[str, str], name: str
) -> list[dict[str, Any]]:
    component = _component(definition, "BUTTONS")
    buttons = list(component.get("buttons") or []) if component else []
    bound: dict[int, Mapping[str, Any]] = {}
    for spec in specs or []:
        if not isinstance(spec, Mapping) or not isinstance(spec.get("index"), int):
            raise PermanentError(f"template {name!r} button binding needs an index: {spec!r}")
        if not 0 <= spec["index"] < len(buttons):
            raise PermanentError(f"template {name!r} has no button {spec['index']}")
        bound[spec["index"]] = spec
    out: list[dict[str, Any]] = []
    for index, button in enumerate(buttons):
        kind = str(button.get("type", "")).upper()
        spec = bound.get(index)
        where = f"button {index} ({kind.lower()})"
        if kind == "URL" and placeholders(str(button.get("url") or "")):
            if spec is None:
                raise PermanentError(f"template {name!r} {where} needs a value for its URL")
            value = _value(spec.get("value"), fields, name, where)
            parameter: dict[str, Any] = {"type": "text", "text": value}
            out.append(_button("url", index, parameter))
        elif kind == "COPY_CODE":
            if spec is None:
                raise PermanentError(f"template {name!r} {where} needs a code")
            code = _value(spec.get("value"), fields, name, where)
            out.append(_button("copy_code", index, {"type": "coupon_code", "coupon_code": code}))
        elif kind == "QUICK_REPLY":
            if spec is not None and spec.get("payload"):
                payload = {"type": "payload", "payload": str(spec["payload"])}
                out.append(_button("quick_reply", index, payload))
        elif spec is not None:
            raise PermanentError(f"template {name!r} {where} takes no parameters")
    return out


def _button(sub_type: str, index: int, parameter: dict[str, Any]) -> dict[str, Any]:
    return {"type": "button", "sub_type": sub_type, "index": str(index), "parameters": [parameter]}


def render_template(
    row: Mapping[str, Any], lead: Mapping[str, Any], explicit: Sequence[str] = ()
) -> RenderedTemplate:
    """Fill a template row for a lead; explicit parameters replace the body's variables."""
    name = row["name"]
    definition = [c for c in row.get("components") or [] if isinstance(c, Mapping)]
    body = str(row.get("body") or "")
    named = (row.get("parameter_format") == "named") or any(
        not p.isdigit() for p in placeholders(body)
    )
    variables = row.get("variables")
    spec: Mapping[str, Any] = (
        {"body": variables or []} if not isinstance(variables, Mapping) else variables
    )
    fields = lead_fields(lead)
    body_spec: Any = [_clean(p) for p in explicit] if explicit else spec.get("body") or []
    if explicit:
        body_spec = [{"value": v} for v in body_spec]
    body_params, body_values = _text_parameters(body, body_spec, fields, name, "body", named)
    components: list[dict[str, Any]] = []
    header, header_text = _header(definition, spec.get("header"), fields, name, named)
    if header is not None:
        components.append(header)
    if body_params:
        components.append({"type": "body", "parameters": body_params})
    components += _buttons(definition, spec.get("buttons"), fields, name)
    text = fill(body, body_values)
    order = placeholders(body) if named else [str(n) for n in range(1, len(body_values) + 1)]
    return RenderedTemplate(
        id=row["id"],
        name=name,
        language=row["language"],
        channel=row["channel"],
        status=row["status"],
        parameters=tuple(body_values[p] for p in order if p in body_values),
        text=f"{header_text}\n{text}" if header_text else text,
        components=tuple(components),
    )


def choose_language(
    asked: Mapping[str, Any], approved: Sequence[Mapping[str, Any]], lead: Mapping[str, Any]
) -> Mapping[str, Any]:
    """The row to send: the lead's language, then its base language (pt for pt_BR), then the
    company's fallback language, then the row asked for."""
    by_language = {str(r["language"]): r for r in approved}
    wanted = [lead.get("language"), lead.get("fallback_language")]
    for language in wanted:
        if not language:
            continue
        if language in by_language:
            return by_language[language]
        base = str(language).split("_")[0].lower()
        for code, row in by_language.items():
            if code.split("_")[0].lower() == base:
                return row
    return asked


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
        found = await self.store.template_choices(company_id, lead_id, template_id)
        if found is None:
            raise PermanentError(f"template {template_id} not found for this company and lead")
        asked, approved, lead = found
        row = choose_language(asked, [r for r in approved if r["status"] == SENDABLE], lead)
        return render_template(row, lead, explicit)
