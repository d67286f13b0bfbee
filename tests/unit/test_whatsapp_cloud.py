"""The WhatsApp Cloud adapter's pure parts: payloads, error classification, settings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shvya_common.errors import DeferJob, PermanentError, RetryableError
from shvya_common.whatsapp.graph_errors import TABLE, decide
from shvya_dispatch.channels.errors import (
    ChannelPausedError,
    RecipientOptedOutError,
    UndeliverableError,
    WindowClosedError,
)
from shvya_dispatch.channels.whatsapp_cloud import (
    classify_error,
    parse_sent,
    recipient,
    template_payload,
    text_payload,
)
from shvya_dispatch.settings import DispatchSettings
from shvya_dispatch.templates import RenderedTemplate
from tests.fakes.graph_server import error_body


def classify(code: int, status: int = 400) -> Exception:
    return classify_error(status, error_body(code), block_pause_seconds=3600.0)


@pytest.mark.parametrize("code", [130429, 131056, 80007, 4, 131000, 1, 2, 131016, 133004])
def test_rate_limit_and_meta_side_codes_are_retryable(code):
    """Rate limits and Meta-side failures are retried on the job schedule."""
    error = classify(code, 429 if code in (130429, 131056) else 400)
    assert type(error) is RetryableError
    assert str(code) in str(error)


@pytest.mark.parametrize("code", [131051, 132000, 132001, 132016, 100])
def test_bad_request_and_template_codes_are_permanent(code):
    """Unsupported types, bad templates and bad parameters dead-letter with the reason."""
    error = classify(code)
    assert type(error) is PermanentError
    assert f"error {code}" in str(error) and "(#" in str(error)


@pytest.mark.parametrize("code", [131026, 131021])
def test_undeliverable_codes_flag_the_lead(code):
    """131026 and friends are permanent and say the recipient cannot get WhatsApp messages."""
    error = classify(code)
    assert isinstance(error, UndeliverableError) and isinstance(error, PermanentError)
    assert error.code == code


@pytest.mark.parametrize(
    ("code", "seconds"), [(131049, 86400), (131057, 600), (132015, 3600), (132069, 3600)]
)
def test_temporary_refusals_defer_without_spending_attempts(code, seconds):
    """Ecosystem limits, maintenance and a paused template defer the send by the code's delay."""
    before = datetime.now(UTC)
    error = classify(code)
    assert isinstance(error, DeferJob)
    assert abs((error.until - before).total_seconds() - seconds) < 60


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (0, "credentials"),
        (3, "credentials"),
        (10, "credentials"),
        (200, "credentials"),
        (250, "credentials"),
        (299, "credentials"),
        (131005, "credentials"),
        (131031, "account"),
        (131042, "account"),
        (131037, "account"),
        (131045, "account"),
        (131063, "account"),
        (131064, "account"),
        (133010, "account"),
    ],
)
def test_account_level_codes_pause_the_channel(code, kind):
    """Token, permission and account problems pause the company's channel instead of
    dead-lettering each message: until the credentials change, or for the account pause time."""
    error = classify_error(
        400, error_body(code), block_pause_seconds=10.0, account_pause_seconds=7.0
    )
    assert isinstance(error, ChannelPausedError)
    assert error.credential_bound is (kind == "credentials")
    assert error.pause_seconds == (None if kind == "credentials" else 7.0)


def test_is_transient_turns_an_otherwise_permanent_code_into_a_retry():
    """Graph's is_transient flag is honoured for permanent and unknown codes, never for pauses."""
    assert type(classify_error(400, error_body(131009, True), block_pause_seconds=1.0)) is (
        RetryableError
    )
    assert type(classify_error(400, error_body(999999, True), block_pause_seconds=1.0)) is (
        RetryableError
    )
    assert type(classify_error(400, error_body(131009, False), block_pause_seconds=1.0)) is (
        PermanentError
    )
    paused = classify_error(400, error_body(131031, True), block_pause_seconds=1.0)
    assert isinstance(paused, ChannelPausedError)


def test_every_table_entry_names_its_source_and_a_known_action():
    """The one table of Graph codes documents where each mapping comes from."""
    assert len({e.code for e in TABLE}) == len(TABLE)
    for entry in TABLE:
        assert entry.source and entry.meaning
        assert entry.action in ("retry", "defer", "pause", "suppress", "permanent")
        assert (entry.action == "defer") == (entry.defer_seconds is not None)
        assert (entry.action == "pause") == (entry.pause is not None)
    assert decide(131050).entry is not None and decide(131050).entry.scope == "marketing"
    assert decide(131047).effect == "fallback_template"


def test_bsuid_recipients_and_reply_context_are_addressed_as_graph_expects():
    """A username user is addressed by `recipient`, a phone by `to`; a reply may quote."""
    assert text_payload("US.13491208655302741918", "hi", "wamid.Q") == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "recipient": "US.13491208655302741918",
        "type": "text",
        "context": {"message_id": "wamid.Q"},
        "text": {"body": "hi"},
    }
    assert "recipient" not in text_payload("+15551234567", "hi")


def test_window_closed_code_is_its_own_refusal():
    """131047 is a WindowClosedError (permanent at heart: never retried as free text)."""
    error = classify(131047)
    assert isinstance(error, WindowClosedError) and isinstance(error, PermanentError)
    assert error.code == 131047 and "24 hours" in error.reason


def test_marketing_opt_out_code_suppresses_for_marketing():
    """131050 is a RecipientOptedOutError scoped to marketing."""
    error = classify(131050)
    assert isinstance(error, RecipientOptedOutError) and isinstance(error, PermanentError)
    assert error.scope == "marketing"


def test_expired_token_pauses_until_credentials_change():
    """190 pauses the channel with no end time, bound to the refused credentials."""
    error = classify(190, 401)
    assert isinstance(error, ChannelPausedError)
    assert error.pause_seconds is None and error.credential_bound


@pytest.mark.parametrize("code", [368, 131048])
def test_policy_and_spam_blocks_pause_for_the_block_duration(code):
    """368 and 131048 pause the channel for the configured block time, whatever the token."""
    error = classify(code)
    assert isinstance(error, ChannelPausedError)
    assert error.pause_seconds == 3600.0 and not error.credential_bound


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, RetryableError),
        (503, RetryableError),
        (429, RetryableError),
        (400, PermanentError),
        (403, PermanentError),
    ],
)
def test_unknown_codes_follow_the_http_status(status, expected):
    """An unlisted code is retried on 5xx/429 and dead-lettered on other 4xx."""
    body = {"error": {"message": "(#999999) Something new", "code": 999999}}
    assert type(classify_error(status, body, block_pause_seconds=1.0)) is expected


@pytest.mark.parametrize(("status", "expected"), [(502, RetryableError), (404, PermanentError)])
def test_answers_without_a_graph_error_follow_the_http_status(status, expected):
    """A non-Graph error page (a proxy's HTML) is classified by its HTTP status alone."""
    assert type(classify_error(status, None, block_pause_seconds=1.0)) is expected


def test_error_reason_carries_details_and_trace_id():
    """The reason names the code, Graph's message and details, and the fbtrace_id for support."""
    body = error_body(131026)
    reason = str(classify_error(400, body, block_pause_seconds=1.0))
    assert "131026" in reason and "Message Undeliverable" in reason
    assert body["error"]["fbtrace_id"] in reason


def test_text_payload_is_graphs_text_message():
    """A text send is exactly Graph's text message object, `to` as digits without '+'."""
    assert text_payload("+91 98678-00451", "Hello there") == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "919867800451",
        "type": "text",
        "text": {"body": "Hello there"},
    }


def test_template_payload_carries_body_parameters_in_order():
    """A template send names the template and language and fills body parameters in order."""
    template = RenderedTemplate(
        uuid.uuid4(),
        "order_update",
        "en_US",
        "whatsapp_cloud",
        "approved",
        ("Asha", "ORD-9271"),
        "Hi Asha, ORD-9271",
    )
    assert template_payload("+15551234567", template) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15551234567",
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Asha"},
                        {"type": "text", "text": "ORD-9271"},
                    ],
                }
            ],
        },
    }


def test_template_without_parameters_has_no_components():
    """A template with no placeholders is sent without a components list."""
    template = RenderedTemplate(
        uuid.uuid4(), "hello_world", "en_US", "whatsapp_cloud", "approved", (), "Hello World"
    )
    assert "components" not in template_payload("+15551234567", template)["template"]


@pytest.mark.parametrize("to", ["not-a-number", "+12", "alice@example.com"])
def test_unaddressable_recipient_is_permanent(to):
    """A `to` that is no phone number fails before any request is made."""
    with pytest.raises(PermanentError):
        recipient(to)


def test_parse_sent_reads_the_wamid():
    """messages[0].id is the wamid; wa_id and message_status are kept as meta."""
    wamid, meta = parse_sent(
        {
            "messaging_product": "whatsapp",
            "contacts": [{"input": "+15551234567", "wa_id": "15551234567"}],
            "messages": [{"id": "wamid.ABC", "message_status": "accepted"}],
        }
    )
    assert wamid == "wamid.ABC"
    assert meta == {"wa_id": "15551234567", "message_status": "accepted"}


def test_parse_sent_without_a_wamid_is_permanent():
    """A 2xx without messages[0].id is not retried (it may have been sent)."""
    with pytest.raises(PermanentError):
        parse_sent({"messaging_product": "whatsapp", "messages": []})


def test_api_version_is_normalised():
    """A bare Graph version gains its 'v'; nonsense is refused at start-up."""
    assert DispatchSettings(whatsapp_cloud_api_version="21.0").whatsapp_cloud_api_version == "v21.0"
    with pytest.raises(ValidationError):
        DispatchSettings(whatsapp_cloud_api_version="latest")


def test_credentials_come_in_pairs_and_never_appear_in_errors():
    """A token without a phone number id stops start-up, and the error does not echo the token."""
    with pytest.raises(ValidationError) as caught:
        DispatchSettings(whatsapp_cloud_token="EAAG-very-secret-token")
    assert "WHATSAPP_CLOUD_PHONE_ID" in str(caught.value)
    assert "very-secret" not in str(caught.value)
    both = DispatchSettings(whatsapp_cloud_phone_id="1055", whatsapp_cloud_token="EAAG-secret")
    assert both.whatsapp_cloud_configured and "EAAG-secret" not in repr(both)
