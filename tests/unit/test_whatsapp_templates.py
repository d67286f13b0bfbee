"""Template rendering against a template's definition, with no server: named and positional
bodies, header types, button types, the checks that spare a Graph refusal, the language choice,
and Meta's template statuses in our vocabulary."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from shvya_common.errors import PermanentError
from shvya_common.whatsapp.graph_errors import TABLE
from shvya_common.whatsapp.templates import status_from_graph
from shvya_dispatch.templates import choose_language, render_template

LEAD = {
    "contact_name": "Asha Rao",
    "phone_e164": "+919867800451",
    "email": None,
    "attributes": {"order": "ORD-9", "coupon": "SAVE10"},
    "company_name": "Acme",
}


def row(body, variables, components=None, fmt=None, language="en_US", status="approved"):
    return {
        "id": uuid.uuid4(),
        "name": "t",
        "language": language,
        "channel": "whatsapp_cloud",
        "status": status,
        "body": body,
        "variables": variables,
        "components": components,
        "parameter_format": fmt,
    }


def test_named_body_parameters_carry_their_names():
    """A named body sends parameter_name with each value, in order of appearance."""
    rendered = render_template(
        row(
            "Hi {{name}}, order {{order_id}} shipped",
            {"body": {"name": "first_name", "order_id": "order"}},
            fmt="named",
        ),
        LEAD,
    )
    assert rendered.components == (
        {
            "type": "body",
            "parameters": [
                {"type": "text", "parameter_name": "name", "text": "Asha"},
                {"type": "text", "parameter_name": "order_id", "text": "ORD-9"},
            ],
        },
    )
    assert rendered.text == "Hi Asha, order ORD-9 shipped"


def test_named_bindings_must_match_the_placeholders():
    """A named template whose bindings name other parameters fails before sending (132012)."""
    with pytest.raises(PermanentError, match="takes parameters"):
        render_template(row("Hi {{name}}", {"body": {"first": "first_name"}}, fmt="named"), LEAD)


def test_headers_of_every_type_are_filled_or_refused():
    """Text headers take text parameters, media headers a link or id, and a header binding on a
    template without a header is refused."""
    text_header = [
        {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"},
        {"type": "BODY", "text": "Thanks"},
    ]
    rendered = render_template(row("Thanks", {"header": ["order"]}, text_header), LEAD)
    assert rendered.components[0] == {
        "type": "header",
        "parameters": [{"type": "text", "text": "ORD-9"}],
    }
    assert rendered.text == "Order ORD-9\nThanks"
    doc = [{"type": "HEADER", "format": "DOCUMENT"}, {"type": "BODY", "text": "Invoice"}]
    rendered = render_template(
        row("Invoice", {"header": {"link": "https://x/i.pdf", "filename": "i.pdf"}}, doc), LEAD
    )
    assert rendered.components[0]["parameters"] == [
        {"type": "document", "document": {"link": "https://x/i.pdf", "filename": "i.pdf"}}
    ]
    with pytest.raises(PermanentError, match="video header"):
        render_template(row("Hi", {}, [{"type": "HEADER", "format": "VIDEO"}]), LEAD)
    with pytest.raises(PermanentError, match="no header"):
        render_template(row("Hi", {"header": {"link": "https://x"}}, []), LEAD)


def test_buttons_get_url_copy_code_and_quick_reply_parameters_by_index():
    """URL suffixes and copy codes come from lead data, quick-reply payloads are literal, and a
    button that takes no parameter refuses one."""
    buttons = [
        {"type": "BODY", "text": "Hi"},
        {
            "type": "BUTTONS",
            "buttons": [
                {"type": "URL", "url": "https://acme.example/o/{{1}}"},
                {"type": "COPY_CODE", "example": "SAVE"},
                {"type": "QUICK_REPLY", "text": "Stop"},
                {"type": "PHONE_NUMBER", "phone_number": "+15550100"},
            ],
        },
    ]
    spec = {
        "buttons": [
            {"index": 0, "value": "order"},
            {"index": 1, "value": "attributes.coupon"},
            {"index": 2, "payload": "STOP_PROMOS"},
        ]
    }
    rendered = render_template(row("Hi", spec, buttons), LEAD)
    assert [(c["sub_type"], c["index"], c["parameters"][0]) for c in rendered.components] == [
        ("url", "0", {"type": "text", "text": "ORD-9"}),
        ("copy_code", "1", {"type": "coupon_code", "coupon_code": "SAVE10"}),
        ("quick_reply", "2", {"type": "payload", "payload": "STOP_PROMOS"}),
    ]
    extra = {"buttons": [*spec["buttons"], {"index": 3, "value": "order"}]}
    with pytest.raises(PermanentError, match="button 3"):
        render_template(row("Hi", extra, buttons), LEAD)
    with pytest.raises(PermanentError, match="copy_code"):
        render_template(row("Hi", {"buttons": [{"index": 0, "value": "order"}]}, buttons), LEAD)


def test_language_follows_the_lead_its_base_language_then_the_fallback():
    """pt_BR picks pt_BR, pt picks pt_BR, an unknown language the fallback, else the row asked."""
    asked = row("Hi", [], language="en_US")
    rows = [row("Hi", [], language=code) for code in ("en_US", "pt_BR", "es")]
    assert choose_language(asked, rows, {"language": "pt_BR"})["language"] == "pt_BR"
    assert choose_language(asked, rows, {"language": "pt"})["language"] == "pt_BR"
    assert (
        choose_language(asked, rows, {"language": "de", "fallback_language": "es"})["language"]
        == "es"
    )
    assert choose_language(asked, rows, {"language": None}) is asked


@pytest.mark.parametrize(
    ("graph", "ours"),
    [
        ("APPROVED", "approved"),
        ("PAUSED", "paused"),
        ("REJECTED", "rejected"),
        ("DISABLED", "disabled"),
        ("REINSTATED", "approved"),
        ("PENDING_DELETION", "pending_deletion"),
        ("FLAGGED", None),
        ("SOMETHING_NEW", None),
    ],
)
def test_meta_template_statuses_map_to_ours(graph, ours):
    """Meta's statuses and webhook events become our status vocabulary (or change nothing)."""
    assert status_from_graph(graph) == ours


def test_every_graph_code_in_the_table_is_documented():
    """docs/whatsapp-cloud.md lists every code of the one table, so operators see each mapping."""
    doc = (Path(__file__).parents[2] / "docs" / "whatsapp-cloud.md").read_text()
    missing = [e.code for e in TABLE if f"| {e.code}" not in doc]
    assert missing == []
