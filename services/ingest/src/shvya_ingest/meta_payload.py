"""The WhatsApp Cloud API webhook payload, modelled leniently, one object at a time.

Meta sends `{"object": "whatsapp_business_account", "entry": [{"id": <WABA id>, "changes":
[{"field": ..., "value": {...}}]}]}`. For the `messages` field a value carries
`metadata.phone_number_id` (which business number), `contacts[]` (`wa_id` and/or the
business-scoped `user_id`, `profile.name`, `profile.username`), `messages[]`, `statuses[]` and
`errors[]`; other fields (`user_preferences`, `message_template_status_update`, ...) carry their
own shapes. Every model ignores fields it does not know and makes every field optional but the
ids, because a model that refuses one object must never cost the rest of the batch: the parser
(`meta_items`) validates each message, status and contact separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DELIVERY_STATUSES = frozenset({"sent", "delivered", "read", "failed"})
MEDIA_TYPES = ("image", "video", "audio", "voice", "document", "sticker")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Profile(_Lenient):
    name: str | None = None
    username: str | None = None


class Contact(_Lenient):
    wa_id: str | None = None
    user_id: str | None = None
    parent_user_id: str | None = None
    profile: Profile | None = None


class Text(_Lenient):
    body: str = ""


class Media(_Lenient):
    id: str | None = None
    caption: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    filename: str | None = None
    voice: bool | None = None
    animated: bool | None = None


class Reply(_Lenient):
    id: str | None = None
    title: str | None = None
    description: str | None = None


class NfmReply(_Lenient):
    name: str | None = None
    body: str | None = None
    # A JSON document as a string, as Meta sends it.
    response_json: str | dict[str, Any] | None = None


class Interactive(_Lenient):
    type: str | None = None
    button_reply: Reply | None = None
    list_reply: Reply | None = None
    nfm_reply: NfmReply | None = None


class Button(_Lenient):
    text: str | None = None
    payload: str | None = None


class Location(_Lenient):
    latitude: float | None = None
    longitude: float | None = None
    name: str | None = None
    address: str | None = None
    url: str | None = None


class OrderItem(_Lenient):
    product_retailer_id: str | None = None
    quantity: int | float | str | None = None
    item_price: int | float | str | None = None
    currency: str | None = None


class Order(_Lenient):
    catalog_id: str | None = None
    text: str | None = None
    product_items: list[OrderItem] = Field(default_factory=list)


class Reaction(_Lenient):
    message_id: str | None = None
    emoji: str | None = None


class Edit(_Lenient):
    original_message_id: str | None = None
    # The new content, shaped like a message of its own ({"type": "text", "text": {...}}).
    message: dict[str, Any] = Field(default_factory=dict)


class Revoke(_Lenient):
    original_message_id: str | None = None


class System(_Lenient):
    body: str | None = None
    type: str | None = None
    wa_id: str | None = None
    user_id: str | None = None
    parent_user_id: str | None = None
    identity: str | None = None
    customer: str | None = None


class Referral(_Lenient):
    source_url: str | None = None
    source_id: str | None = None
    source_type: str | None = None
    headline: str | None = None
    body: str | None = None
    media_type: str | None = None
    image_url: str | None = None
    video_url: str | None = None
    thumbnail_url: str | None = None
    ctwa_clid: str | None = None


class Context(_Lenient):
    id: str | None = None
    sender: str | None = Field(None, alias="from")
    forwarded: bool | None = None
    frequently_forwarded: bool | None = None
    referred_product: dict[str, Any] | None = None


class ErrorData(_Lenient):
    details: str | None = None


class WaError(_Lenient):
    code: int | None = None
    title: str | None = None
    message: str | None = None
    error_data: ErrorData | None = None
    href: str | None = None


class WaMessage(_Lenient):
    id: str
    # Omitted for a username user whose phone number Meta does not share.
    sender: str | None = Field(None, alias="from")
    from_user_id: str | None = None
    from_parent_user_id: str | None = None
    group_id: str | None = None
    # Unix seconds: a string in Meta's examples, a number from some senders; both are read.
    timestamp: str | int | None = None
    type: str = "text"
    text: Text | None = None
    image: Media | None = None
    video: Media | None = None
    audio: Media | None = None
    voice: Media | None = None
    document: Media | None = None
    sticker: Media | None = None
    location: Location | None = None
    contacts: list[dict[str, Any]] = Field(default_factory=list)
    interactive: Interactive | None = None
    button: Button | None = None
    order: Order | None = None
    reaction: Reaction | None = None
    edit: Edit | None = None
    revoke: Revoke | None = None
    system: System | None = None
    referral: Referral | None = None
    context: Context | None = None
    errors: list[WaError] = Field(default_factory=list)


class WaStatus(_Lenient):
    id: str
    status: str
    timestamp: str | int | None = None
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    errors: list[WaError] = Field(default_factory=list)


class Metadata(_Lenient):
    display_phone_number: str | None = None
    phone_number_id: str | None = None


class Preference(_Lenient):
    wa_id: str | None = None
    user_id: str | None = None
    detail: str | None = None
    category: str | None = None
    value: str | None = None
    timestamp: str | int | None = None


class IdChange(_Lenient):
    previous: str | None = None
    current: str | None = None


class UserIdUpdate(_Lenient):
    wa_id: str | None = None
    detail: str | None = None
    timestamp: str | int | None = None
    user_id: IdChange | None = None
    parent_user_id: IdChange | None = None


class TemplateUpdate(_Lenient):
    event: str | None = None
    message_template_id: int | str | None = None
    message_template_name: str | None = None
    message_template_language: str | None = None
    message_template_category: str | None = None
    reason: str | None = None
    previous_quality_score: str | None = None
    new_quality_score: str | None = None


def unix_time(value: str | int | None) -> datetime | None:
    """Meta's timestamps are Unix seconds, usually as strings."""
    if value is None or value == "":
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError, OSError):
        return None


@dataclass(frozen=True)
class StatusReport:
    """One delivery status of an outbound message, as stored."""

    provider_message_id: str
    status: str
    status_at: datetime
    recipient: str | None
    errors: list[dict[str, Any]]
    error_text: str | None


def status_report(status: WaStatus, received_at: datetime) -> StatusReport | None:
    """None for statuses that are not delivery states (e.g. 'deleted', 'warning')."""
    if status.status not in DELIVERY_STATUSES:
        return None
    errors = [e.model_dump(exclude_none=True) for e in status.errors]
    error_text = None
    if status.status == "failed":
        error_text = (
            "; ".join(describe_error(e) for e in status.errors) or "failed (no error given)"
        )
    return StatusReport(
        provider_message_id=status.id,
        status=status.status,
        status_at=unix_time(status.timestamp) or received_at,
        recipient=status.recipient_id or status.recipient_user_id,
        errors=errors,
        error_text=error_text,
    )


def describe_error(error: WaError) -> str:
    text = f"{error.code}: {error.title or error.message or 'error'}"
    if error.error_data is not None and error.error_data.details:
        text += f" ({error.error_data.details})"
    return text[:1000]
