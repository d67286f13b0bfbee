"""Personalised text for sends (sequence steps, campaigns, templates): Jinja2 in its sandbox.

Templates are written by the company's users, so they run in Jinja2's `SandboxedEnvironment`
(no attribute access to Python internals) with `StrictUndefined`: a template that names a field
the lead does not have fails at preview, with the field's name, instead of sending "Hi ,".
Autoescaping is on for HTML parts and off for text parts.

    render_text("Hi {{ lead.first_name }}", lead_context(lead_row, company_row))
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

MAX_TEMPLATE_CHARS = 100_000


class RenderError(ValueError):
    """A template that does not parse, or names a field the context lacks."""


@lru_cache(maxsize=2)
def _env(html: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=StrictUndefined, autoescape=html, trim_blocks=False, keep_trailing_newline=True
    )


@lru_cache(maxsize=1024)
def _compiled(source: str, html: bool) -> Any:
    try:
        return _env(html).from_string(source)
    except TemplateError as err:
        raise RenderError(f"template does not parse: {err}") from err


def render(source: str, context: Mapping[str, Any], *, html: bool = False) -> str:
    """Render `source` with `context`; raises RenderError with the reason."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise RenderError(f"template longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        return str(_compiled(source, html).render(**context))
    except UndefinedError as err:
        raise RenderError(f"template names a missing field: {err.message}") from err
    except TemplateError as err:
        raise RenderError(f"template failed: {err}") from err


def check_syntax(source: str, *, html: bool = False) -> None:
    """Raise RenderError if `source` does not parse (no context needed, nothing rendered)."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise RenderError(f"template longer than {MAX_TEMPLATE_CHARS} characters")
    _compiled(source, html)


def render_text(source: str, context: Mapping[str, Any]) -> str:
    return render(source, context, html=False)


def render_html(source: str, context: Mapping[str, Any]) -> str:
    return render(source, context, html=True)


def lead_context(
    lead: Mapping[str, Any], company: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What a template may use: `lead` (name, first_name, phone, email, stage, attributes as
    `lead.attributes.x` and top-level keys) and `company` (name, timezone)."""
    name = (lead.get("contact_name") or "").strip()
    attributes = dict(lead.get("attributes") or {})
    attributes.pop("summary", None)  # internal, long, and not the lead's own words
    fields = {
        "id": str(lead.get("id", "")),
        "name": name,
        "first_name": name.split()[0] if name else "",
        "phone": lead.get("phone_e164") or "",
        "email": lead.get("email") or "",
        "stage": lead.get("stage") or "",
        "timezone": lead.get("timezone") or "",
        "attributes": attributes,
    }
    context: dict[str, Any] = {"lead": {**attributes, **fields}}
    if company is not None:
        context["company"] = {
            "name": company.get("name") or "",
            "timezone": company.get("timezone") or "UTC",
        }
    return context
