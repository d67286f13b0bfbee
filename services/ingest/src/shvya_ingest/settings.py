"""Ingest settings: where to listen, limits on what it accepts, the admin token, and the
provider webhooks, opt-out keywords, inbound email (providers' webhooks, the SMTP receiver and
IMAP mailboxes)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from shvya_common.knowledge.settings import KnowledgeSettings
from shvya_common.whatsapp.graph_settings import GraphSettings

# Exact-match opt-out words (compared case- and accent-insensitively, see `optout.py`).
DEFAULT_OPTOUT_KEYWORDS = [
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "OPT OUT",
    "OPTOUT",
    "PARAR",
    "PARE",
    "SAIR",
    "CANCELAR",  # pt, es
    "BAJA",
    "DAR DE BAJA",  # es
    "ARRÊTER",
    "ARRETER",
    "DÉSABONNER",
    "DESABONNER",  # fr
    "STOPP",
    "ABMELDEN",  # de, sv, no
    "रोकें",
    "रोको",
    "बंद करो",
    "बंद",  # hi
]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# KnowledgeSettings is a CommonSettings with the knowledge-base fields (the KB API's embedder).
class IngestSettings(KnowledgeSettings, GraphSettings):
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8000, ge=1, le=65535)
    http_workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    admin_token: SecretStr = Field(
        ...,
        description="The platform operator's bearer token (creates companies and their first"
        " key, replays dead letters); at least 16 characters. Not a company's key.",
    )
    inbound_auth: Literal["required", "anonymous-loopback"] = Field(
        "anonymous-loopback",
        description="'required': every POST /inbound-message needs an ingest or admin key."
        " 'anonymous-loopback' (the embedded default) also lets a request without a credential"
        " file into the default company, and is refused unless HOST is a loopback address.",
    )
    fast_path: bool = Field(
        True, description="Serve POST /inbound-message through the pure-ASGI fast path."
    )
    api_rate_limit: str = Field(
        "1200/minute",
        description="Requests per API key (the `limits` notation); over it: 429 and Retry-After.",
    )
    inbound_rate_limit: str = Field(
        "60/minute", description="Inbound messages per sender address and company."
    )
    max_page_size: int = Field(200, ge=1, le=1000, description="Largest `limit` a list takes.")
    max_body_bytes: int = Field(
        65_536, ge=1024, description="Largest JSON body /inbound-message accepts."
    )
    webhook_max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest body a provider webhook may send."
    )
    default_phone_region: str | None = Field(
        None, description="ISO region for numbers without +country code, e.g. 'IN'."
    )
    default_company_name: str = "Default company"
    request_timeout_seconds: float = Field(
        10.0, gt=0, description="A request that cannot finish by then gets 503."
    )
    console_enabled: bool = Field(True, description="Serve the operator console at /console/.")
    console_session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="How long a console sign-in lasts."
    )
    console_cookie_secure: bool = Field(
        True,
        description="Mark the session cookie Secure (browsers accept it on https and on"
        " http://localhost / 127.0.0.1 only). Leave on; off only behind a plain-http proxy.",
    )
    console_stream_seconds: float = Field(
        900.0,
        gt=0,
        description="Longest live stream (GET /v1/stream); the browser then reconnects and"
        " re-reads what it shows.",
    )
    signin_rate_limit: str = Field(
        "10/minute", description="Sign-in attempts per email address (and 6x that per client)."
    )

    @model_validator(mode="after")
    def _anonymous_only_on_loopback(self) -> IngestSettings:
        if self.inbound_auth != "required" and not is_loopback(self.host):
            raise ValueError(
                f"HOST={self.host} is not a loopback address: set INBOUND_AUTH=required, so that"
                " posting inbound messages needs a company's API key"
            )
        return self

    @field_validator("signin_rate_limit")
    @classmethod
    def _limit_notation(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate limit such as '10/minute'") from None
        return value

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if len(token) < 16 or token.lower() in {"changeme", "change-me-please", "secret"}:
            raise ValueError("ADMIN_TOKEN must be a random string of at least 16 characters")
        return value

    whatsapp_verify_token: SecretStr | None = Field(
        None, description="Verify token typed into Meta's webhook setup; answers the handshake."
    )
    whatsapp_app_secret: SecretStr | None = Field(
        None,
        description="Meta app secret; signs webhook POSTs (X-Hub-Signature-256) for the"
        " platform's number and for companies' accounts that set no app_secret of their own.",
    )
    whatsapp_cloud_phone_id: str | None = Field(
        None,
        pattern=r"^\d+$",
        description="The platform's own business number (as dispatch reads it): its webhooks"
        " file into the default company. Other numbers belong to companies' channel accounts;"
        " a number no one owns is recorded and skipped.",
    )
    whatsapp_cloud_waba_id: str | None = Field(
        None,
        pattern=r"^\d+$",
        description="The platform's WhatsApp Business Account: its template updates apply to"
        " the default company (and companies routed to it).",
    )
    whatsapp_status_resend_seconds: float = Field(
        300.0,
        gt=0,
        description="A message WhatsApp reports failed for a Meta-side reason is sent once more"
        " this long after the failure.",
    )
    whatsapp_status_resend_max: int = Field(
        1, ge=0, le=5, description="Resends of one message after failed statuses; 0 = none."
    )
    whatsapp_status_pause_seconds: float = Field(
        3600.0,
        gt=0,
        description="An account problem reported by a failed status (payment, lock) pauses the"
        " company's WhatsApp Cloud sends this long.",
    )
    whatsapp_status_block_pause_seconds: float = Field(
        86400.0,
        gt=0,
        description="A policy or spam block reported by a failed status (368, 131048) pauses"
        " this long.",
    )
    whatsapp_status_late_poll_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="How often ingest looks for failed statuses that arrived before dispatch"
        " recorded their wamid, to act on them once it has: the longest such a failure waits.",
    )
    optout_keywords: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_OPTOUT_KEYWORDS),
        description="Comma-separated; an inbound message that is exactly one of these opts out.",
    )
    optout_confirmation_text: str = Field(
        "You have been unsubscribed and will not receive further messages from us.",
        min_length=1,
        max_length=1000,
        description="The one message sent to confirm an opt-out.",
    )
    email_webhook_token: SecretStr | None = Field(
        None,
        description="The platform's token for POST /webhooks/email ('Authorization: Bearer"
        " <token>', any company). Without it the webhook takes only a company's ingest or admin"
        " key; it never accepts mail without a credential.",
    )
    smtp_receiver_enabled: bool = Field(
        False, description="Run a built-in SMTP server that files received mail as inbound."
    )
    smtp_receiver_host: str = "127.0.0.1"
    smtp_receiver_port: int = Field(2525, ge=0, le=65535)
    smtp_receiver_hostname: str = Field(
        "shvya-ingest", description="Name the SMTP receiver announces in its greeting."
    )
    smtp_receiver_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest message the SMTP receiver accepts."
    )
    smtp_receiver_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Domains whose mail the SMTP receiver files into the default company"
        " (comma-separated). Any other recipient must be a company's registered"
        " inbound_address, or gets 550; only a loopback bind with none set takes every"
        " recipient.",
    )

    # --- Inbound email from providers, and IMAP mailboxes ---
    sendgrid_inbound_public_key: str | None = Field(
        None,
        description="SendGrid Inbound Parse security policy's public key (base64 or PEM); set, "
        "POST /webhooks/email/sendgrid verifies each request's ECDSA signature.",
    )
    mailgun_webhook_signing_key: SecretStr | None = Field(
        None, description="Mailgun's HTTP webhook signing key; verifies route forwards."
    )
    postmark_inbound_username: str | None = Field(
        None, description="Basic-auth user in the Postmark inbound webhook URL."
    )
    postmark_inbound_password: SecretStr | None = Field(
        None, description="Basic-auth password in the Postmark inbound webhook URL."
    )
    email_webhook_max_age_seconds: float = Field(
        300.0, gt=0, description="A signed provider request older (or newer) than this is refused."
    )
    email_webhook_max_bytes: int = Field(
        40 * 1024 * 1024, ge=1024, description="Largest body an inbound-email webhook may send."
    )
    email_webhook_timeout_seconds: float = Field(
        30.0, gt=0, description="Deadline of an inbound-email webhook request."
    )
    email_attachment_max_bytes: int = Field(
        25 * 1024 * 1024, ge=0, description="Attachments larger than this are listed, not stored."
    )
    imap_enabled: bool = Field(
        True, description="Read the IMAP mailboxes stored for companies (admin API)."
    )
    imap_poll_seconds: float = Field(
        60.0, gt=0, description="Check interval for servers without IDLE (and between IDLEs)."
    )
    imap_idle_seconds: float = Field(
        600.0, gt=0, le=1740, description="Longest IDLE before it is renewed (RFC 2177: < 29 min)."
    )
    imap_timeout_seconds: float = Field(30.0, gt=0, description="Per IMAP command.")
    imap_refresh_seconds: float = Field(
        30.0, gt=0, description="How often the list of mailboxes is re-read for changes."
    )

    @field_validator(
        "whatsapp_verify_token",
        "whatsapp_app_secret",
        "whatsapp_cloud_phone_id",
        "whatsapp_cloud_waba_id",
        "email_webhook_token",
        "mailgun_webhook_signing_key",
        "postmark_inbound_password",
        "sendgrid_inbound_public_key",
        "postmark_inbound_username",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("sendgrid_inbound_public_key")
    @classmethod
    def _check_sendgrid_key(cls, value: str | None) -> str | None:
        if value is not None:
            from cryptography.hazmat.primitives import serialization

            text = value.strip()
            try:
                if text.startswith("-----BEGIN"):
                    serialization.load_pem_public_key(text.encode())
                else:
                    import base64

                    serialization.load_der_public_key(base64.b64decode(text, validate=True))
            except Exception:
                raise ValueError(
                    "SENDGRID_INBOUND_PUBLIC_KEY must be the policy's public key (base64 or PEM)"
                ) from None
        return value

    @field_validator("optout_keywords", "smtp_receiver_domains", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _one_smtp_listener(self) -> IngestSettings:
        if self.smtp_receiver_enabled and self.http_workers > 1:
            # Every worker process would run the lifespan and bind the same SMTP port.
            raise ValueError("SMTP_RECEIVER_ENABLED needs HTTP_WORKERS=1")
        if (self.postmark_inbound_username is None) != (self.postmark_inbound_password is None):
            raise ValueError("set both POSTMARK_INBOUND_USERNAME and POSTMARK_INBOUND_PASSWORD")
        return self
