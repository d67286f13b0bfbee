"""The forms of a WhatsApp Web message id that ingest matches (`id_forms`)."""

from __future__ import annotations

from shvya_ingest.whatsapp_web_inbound import id_forms


def test_an_id_in_a_privacy_id_chat_is_also_tried_under_the_chats_number() -> None:
    """An id naming its chat by a privacy id gets the number's form too, keeping who sent it
    and its stanza id."""
    assert id_forms("true_2077@lid_3EB0AB", "15550103001@c.us") == [
        "true_2077@lid_3EB0AB",
        "true_15550103001@c.us_3EB0AB",
    ]
    assert id_forms("false_2077@lid_3A_X", "15550103001@c.us")[1] == "false_15550103001@c.us_3A_X"


def test_other_ids_keep_their_one_form() -> None:
    """An id already in the number's form, one without a mapped number and one that is not an
    id at all are matched only as they are."""
    assert id_forms("true_15550103001@c.us_3EB0AB", "15550103001@c.us") == [
        "true_15550103001@c.us_3EB0AB"
    ]
    assert id_forms("true_2077@lid_3EB0AB", None) == ["true_2077@lid_3EB0AB"]
    assert id_forms("true_2077@lid_3EB0AB", "2077@lid") == ["true_2077@lid_3EB0AB"]
    assert id_forms("garbage", "15550103001@c.us") == ["garbage"]
