"""Personalisation in Jinja2's sandbox: fields render, missing fields and unsafe code refuse."""

from __future__ import annotations

import pytest

from shvya_common.render import RenderError, lead_context, render_html, render_text

LEAD = {
    "id": "l1",
    "contact_name": "Ana María Lopez",
    "phone_e164": "+4915112345678",
    "email": "ana@example.org",
    "attributes": {"plan": "annual", "summary": {"summary": "long"}},
}


def test_lead_and_company_fields_render():
    """First name, attributes (by name and under `attributes`) and company render."""
    ctx = lead_context(LEAD, {"name": "Velora", "timezone": "Europe/Berlin"})
    text = (
        "Hi {{ lead.first_name }}, your {{ lead.plan }} plan ({{ lead.attributes.plan }})"
        " at {{ company.name }}"
    )
    assert render_text(text, ctx) == "Hi Ana, your annual plan (annual) at Velora"


def test_a_missing_field_is_refused_with_its_name():
    """StrictUndefined: a template naming a field the lead lacks fails instead of rendering ''."""
    with pytest.raises(RenderError, match="coupon"):
        render_text("Use {{ lead.coupon }}", lead_context(LEAD))


def test_the_sandbox_refuses_python_internals():
    """A template cannot reach Python internals through attributes."""
    with pytest.raises(RenderError):
        render_text("{{ lead.__class__.__mro__ }}", lead_context(LEAD))


def test_html_parts_escape_lead_data_and_text_parts_do_not():
    """A name with markup is escaped in HTML and kept as typed in text."""
    ctx = lead_context({**LEAD, "contact_name": "<b>Bo</b>"})
    assert render_html("Hi {{ lead.name }}", ctx) == "Hi &lt;b&gt;Bo&lt;/b&gt;"
    assert render_text("Hi {{ lead.name }}", ctx) == "Hi <b>Bo</b>"


def test_a_template_that_does_not_parse_says_so():
    """Broken syntax is a RenderError with the parser's reason."""
    with pytest.raises(RenderError, match="does not parse"):
        render_text("Hi {{ lead.name ", lead_context(LEAD))
