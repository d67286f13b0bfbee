"""The one parser for WhatsApp Cloud notifications, kind by kind, on payloads in Meta's
documented format: what is filed (and the text the AI reads), what changes a filed message,
what changes a lead, and what is only recorded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shvya_ingest.meta_items import (
    Edit,
    IdentityChange,
    Inbound,
    Invalid,
    PreferenceChange,
    Reaction,
    Recorded,
    Revoke,
    TemplateEvent,
    parse_notification,
)
from tests import meta_samples as samples

NOW = datetime(2026, 5, 1, tzinfo=UTC)
PHONE = "16505551234"


def parse(payload):
    return parse_notification(payload, NOW)


def one(payload, kind=Inbound):
    items = parse(payload).items
    assert len(items) == 1, items
    assert isinstance(items[0], kind), items[0]
    return items[0]


def test_text_is_filed_with_sender_name_and_business_number():
    """A text message becomes an inbound item from the E.164 sender, named by its contact."""
    item = one(
        samples.messages(
            [samples.text("wamid.t1", PHONE, "Does it come in blue?")],
            [samples.contact(PHONE, "Sheena Nelson")],
        )
    )
    assert (item.text, item.sender.phone, item.sender.name) == (
        "Does it come in blue?",
        "+16505551234",
        "Sheena Nelson",
    )
    assert item.meta["phone_number_id"] == samples.PHONE_NUMBER_ID
    assert int(item.sent_at.timestamp()) == samples.TS


@pytest.mark.parametrize(
    ("builder", "kind", "expected"),
    [
        (samples.image, "image", "[Image attached: image/jpeg] Is this crack covered?"),
        (samples.voice, "voice", "[Voice message attached: audio/ogg; codecs=opus]"),
        (samples.document, "document", "[Document attached: offer.pdf, application/pdf]"),
        (samples.sticker, "sticker", "[Sticker attached: image/webp]"),
        (samples.video, "video", "[Video attached: video/mp4] unboxing"),
    ],
)
def test_media_keeps_its_id_and_describes_the_attachment(builder, kind, expected):
    """Media messages are filed with a description and caption for the AI and a download ref."""
    if builder is samples.image:
        message = builder("wamid.m", PHONE, "1055", "Is this crack covered?")
    else:
        message = builder("wamid.m", PHONE, "1055")
    item = one(samples.messages([message]))
    assert item.text.startswith(expected)
    assert item.media is not None and item.media.media_id == "1055" and item.media.kind == kind
    assert item.meta["media"]["id"] == "1055"


def test_location_and_contact_cards_are_structured_data():
    """Locations keep their coordinates and contact cards their phones and emails in meta."""
    loc = one(samples.messages([samples.location("wamid.l", PHONE)]))
    assert loc.meta["location"]["latitude"] == 37.483307
    assert loc.text == (
        "[Location shared: Meta Headquarters; 1 Hacker Way, Menlo Park, CA 94025; "
        "37.483307, -122.148981]"
    )
    card = one(samples.messages([samples.contacts_card("wamid.c", PHONE)]))
    assert card.meta["contacts"][0]["emails"][0]["email"] == "bjohnson@example.com"
    assert "Barbara J. Johnson" in card.text and "+1 (650) 555-1234" in card.text


def test_interactive_replies_keep_ids_and_payloads():
    """Button and list replies keep their ids, template quick replies their payload, flows
    their answers, each with a readable text."""
    button = one(samples.messages([samples.button_reply("wamid.b", PHONE, "wamid.out")]))
    assert button.text == "Gold plan"
    assert button.meta["interactive"] == {
        "type": "button_reply",
        "id": "plan-gold",
        "title": "Gold plan",
    }
    assert button.meta["context_id"] == "wamid.out"
    row = one(samples.messages([samples.list_reply("wamid.r", PHONE)]))
    assert row.text == "Thursday 10:00 (In person)" and row.meta["interactive"]["id"] == "slot-3"
    quick = one(samples.messages([samples.quick_reply("wamid.q", PHONE)]))
    assert quick.text == "Stop promotions" and quick.meta["button"]["payload"] == "STOP_PROMOS"
    flow = one(samples.messages([samples.flow_reply("wamid.f", PHONE)]))
    assert flow.meta["interactive"]["response"]["budget"] == "5000"
    assert flow.text == "[Form submitted (flow): budget: 5000; city: Pune]"


def test_order_lists_its_items():
    """An order keeps its catalog and lines, and reads as the items ordered."""
    item = one(samples.messages([samples.order("wamid.o", PHONE)]))
    assert item.meta["order"]["product_items"][0]["product_retailer_id"] == "di9ozbzfi4"
    assert item.text == "[Order from catalog: 2 × di9ozbzfi4 (30 USD)] Please deliver by Friday"


def test_referral_group_welcome_and_unsupported_are_filed_with_context():
    """An ad referral, a group id, a first-open welcome and an unsupported message are filed,
    keeping what they carry."""
    ad = one(samples.messages([samples.referral_text("wamid.a", PHONE, "Is this still on?")]))
    assert ad.referral is not None and ad.referral["ctwa_clid"] == "Afc3nYt8Zc1RMmQ6l7xLJKrdh5gVpu"
    group = one(samples.messages([samples.text("wamid.g", PHONE, "hi all", group_id="G1")]))
    assert group.meta["group_id"] == "G1"
    welcome = one(samples.messages([samples.request_welcome("wamid.w", PHONE)]))
    assert welcome.kind == "request_welcome" and "first time" in welcome.text
    odd = one(samples.messages([samples.unsupported("wamid.u", PHONE)]))
    assert "not support" in odd.text and odd.meta["errors"][0]["code"] == 131051


def test_username_sender_without_phone_is_identified_by_bsuid():
    """A message with from_user_id and no `from` is filed under the business-scoped user id."""
    message = samples.text("wamid.u1", None, "hello", from_user_id=samples.BSUID)
    item = one(
        samples.messages(
            [message], [samples.contact(None, "Sheena", samples.BSUID, username="@sheena")]
        )
    )
    assert item.sender.phone is None and item.sender.address == samples.BSUID
    assert (item.sender.username, item.sender.name) == ("@sheena", "Sheena")
    assert item.meta["user_id"] == samples.BSUID


def test_edits_revokes_and_reactions_change_messages_instead_of_being_filed():
    """Edits carry the new text, revokes and reactions their target; none is an inbound item."""
    parsed = parse(
        samples.messages(
            [
                samples.edit("wamid.e", PHONE, "wamid.t1", "Does it come in green?"),
                samples.revoke("wamid.v", PHONE, "wamid.t1"),
                samples.reaction("wamid.x", PHONE, "wamid.out"),
                samples.reaction("wamid.y", PHONE, "wamid.out", emoji=None),
            ]
        )
    )
    assert parsed.of(Inbound) == []
    (edit,) = parsed.of(Edit)
    assert (edit.original_wamid, edit.text) == ("wamid.t1", "Does it come in green?")
    assert parsed.of(Revoke)[0].original_wamid == "wamid.t1"
    assert [(r.target_wamid, r.emoji) for r in parsed.of(Reaction)] == [
        ("wamid.out", "👍"),
        ("wamid.out", None),
    ]


def test_identity_changes_come_from_system_messages_and_user_id_update():
    """user_changed_number gives the new phone; user_changed_user_id and user_id_update the new
    business-scoped user id."""
    number = one(
        samples.messages([samples.number_changed("wamid.s", PHONE, "16505559999")]), IdentityChange
    )
    assert (number.old_phone, number.new_phone, number.name) == (
        "+16505551234",
        "+16505559999",
        "Sheena",
    )
    new_id = "US.99999999999999999999"
    moved = one(
        samples.messages([samples.user_id_changed("wamid.s2", samples.BSUID, new_id)]),
        IdentityChange,
    )
    assert (moved.old_user_id, moved.new_user_id) == (samples.BSUID, new_id)
    update = one(samples.user_id_update(PHONE, samples.BSUID, new_id), IdentityChange)
    assert (update.kind, update.old_phone, update.new_user_id) == (
        "user_id_update",
        "+16505551234",
        new_id,
    )


def test_preferences_templates_and_errors():
    """Marketing stop is a preference change, template status updates are template events, and
    webhook errors are recorded."""
    stop = one(samples.preference(PHONE, "stop"), PreferenceChange)
    assert (stop.category, stop.value, stop.sender.phone) == (
        "marketing_messages",
        "stop",
        "+16505551234",
    )
    event = one(samples.template_status("order_update", "en_US", "PAUSED", 77), TemplateEvent)
    assert (event.event, event.template_id, event.where.waba_id) == (
        "PAUSED",
        "77",
        samples.WABA_ID,
    )
    error = one(samples.webhook_errors(), Recorded)
    assert error.kind == "error" and error.reason.startswith("130429")


def test_one_bad_object_never_costs_the_rest_of_the_batch():
    """An unreadable message, a sender with no identity and an unknown future type are kept as
    items of their own while the good messages around them parse."""
    payload = samples.messages(
        [
            samples.text("wamid.ok1", PHONE, "first"),
            {"type": "text", "text": {"body": "no id"}},
            "not even an object",
            samples.text("wamid.noid", None, "nobody"),
            samples.future_kind("wamid.future", PHONE),
            samples.text("wamid.ok2", PHONE, "second"),
        ]
    )
    parsed = parse(payload)
    assert [i.text for i in parsed.of(Inbound)] == ["first", "second"]
    assert [i.kind for i in parsed.of(Invalid)] == ["message", "message", "message"]
    assert [i.kind for i in parsed.of(Recorded)] == ["message.hologram"]


def test_unknown_fields_are_recorded_not_refused():
    """A webhook field we do not handle (an account update, or one Meta adds later) is kept."""
    for field in ("account_update", "some_future_field"):
        item = one(samples.envelope({"anything": 1}, field=field), Recorded)
        assert item.kind == field
