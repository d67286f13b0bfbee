"""Dispatch settings: which channels are live, how unconfigured ones behave, and each channel's
connection (SMTP for email, the browser profile for WhatsApp Web)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from shvya_common.whatsapp.graph_settings import GraphSettings

# What WhatsApp Cloud delivers as media (Meta's supported media types), downloaded by default.
DEFAULT_MEDIA_TYPES = (
    "audio/aac",
    "audio/amr",
    "audio/mpeg",
    "audio/mp4",
    "audio/ogg",
    "image/jpeg",
    "image/png",
    "image/webp",
    "video/mp4",
    "video/3gpp",
    "text/plain",
    "application/pdf",
    "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
)
# A WhatsApp Web account name is a directory name under WHATSAPP_WEB_PROFILE_DIR.
ACCOUNT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class DispatchSettings(GraphSettings):
    unconfigured_channels: Literal["log", "fail"] = Field(
        "log",
        description="A send on a channel with no credentials: record it on the log channel "
        "(status 'logged', so the embedded default closes the loop) or fail permanently.",
    )
    log_channel_file: Path | None = Field(
        None, description="Also append each log-channel send to this JSON-lines file."
    )
    channel_accounts_refresh_seconds: float = Field(
        30.0,
        gt=0,
        description="How long a company's channel account is used before it is read again (a"
        " failed send reads it again at once).",
    )
    channel_accounts_allow_private_hosts: bool = Field(
        False,
        description="Let companies' accounts name SMTP servers or Graph base URLs on loopback,"
        " private or link-local addresses (self-hosting, tests); off, only public hosts.",
    )

    # --- WhatsApp Cloud API (Meta Graph); unset credentials leave the channel unconfigured ---
    whatsapp_cloud_phone_id: str | None = Field(
        None, pattern=r"^\d+$", description="Phone number ID (WhatsApp > API Setup in Meta's app)."
    )
    whatsapp_cloud_token: SecretStr | None = Field(
        None, description="Access token (a system user's permanent token in production)."
    )
    whatsapp_cloud_timeout_seconds: float = Field(15.0, gt=0, description="Whole request.")
    whatsapp_cloud_connect_timeout_seconds: float = Field(5.0, gt=0)
    whatsapp_cloud_block_pause_seconds: float = Field(
        86400.0, gt=0, description="How long a policy/spam block (368, 131048) pauses a company."
    )
    whatsapp_cloud_account_pause_seconds: float = Field(
        3600.0,
        gt=0,
        description="How long an account problem (payment 131042, locked 131031, registration,"
        " display name) pauses a company before sends are tried again.",
    )
    whatsapp_cloud_waba_id: str | None = Field(
        None,
        pattern=r"^\d+$",
        description="WhatsApp Business Account ID; set it to sync templates from Graph.",
    )
    whatsapp_template_sync_seconds: float = Field(
        3600.0, ge=0, description="How often templates are synced from Graph; 0 turns it off."
    )
    whatsapp_media_max_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="Largest received attachment downloaded."
    )
    whatsapp_media_mime_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_MEDIA_TYPES),
        description="Comma-separated mime types downloaded; others are recorded as rejected.",
    )

    @field_validator("whatsapp_media_mime_types", "smtp_relay_domains", mode="before")
    @classmethod
    def _split_lowercase(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    # --- Send policies: defaults; companies.settings->'policies'->'<channel>' overrides them ---
    policy_whatsapp_cloud_min_gap_seconds: float = Field(
        15.0, ge=0, description="Least time between two messages to the same recipient."
    )
    policy_whatsapp_cloud_window_hours: float = Field(
        24.0, gt=0, description="Customer-service window after the lead's last inbound message."
    )
    policy_whatsapp_web_min_gap_seconds: float = Field(
        60.0, ge=0, description="Least time between two messages from the same account."
    )
    policy_whatsapp_web_jitter_seconds: float = Field(
        30.0, ge=0, description="Up to this much random time added to each gap."
    )
    policy_whatsapp_web_daily_cap: int = Field(
        200, ge=0, description="Messages per account per local day; 0 = no cap."
    )
    # Ban-aware pacing of WhatsApp Web accounts (issue 12); see docs/policies.md.
    policy_whatsapp_web_warmup: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [20, 30, 45, 60, 80, 100, 130, 160],
        description="A new number's daily send limit on its 1st, 2nd, ... day after linking "
        "(comma separated); from the day after the last, the daily cap; empty = no warm-up.",
    )
    policy_whatsapp_web_first_contact_daily_cap: int = Field(
        15,
        ge=0,
        description="Messages to people the account never talked with, per account per"
        " local day; 0 = no cap.",
    )
    policy_whatsapp_web_identical_text_hourly_cap: int = Field(
        5, ge=0, description="Sends of one same text per account per hour; 0 = no cap."
    )
    policy_whatsapp_web_quiet_hours: str = Field(
        "08:00-21:00",
        pattern=r"^(\d{1,2}:\d{2}-\d{1,2}:\d{2})?$",
        description="Local hours WhatsApp Web may send in (lead's time zone, else company's); "
        "empty = any time.",
    )
    policy_whatsapp_web_paused_max_age_hours: float = Field(
        72.0,
        gt=0,
        description="A send kept waiting by a paused account longer than this since"
        " it was queued is held instead of going out late.",
    )
    policy_whatsapp_web_cloud_fallback: bool = Field(
        True,
        description="While a WhatsApp Web account is paused, send a lead whose WhatsApp "
        "Cloud window is open through the company's WhatsApp Cloud instead.",
    )
    policy_email_quiet_hours: str = Field(
        "08:00-22:00",
        pattern=r"^(\d{1,2}:\d{2}-\d{1,2}:\d{2})?$",
        description="Local hours email may be sent in (lead's time zone, else company's); "
        "empty = any time.",
    )
    policy_pause_recheck_seconds: float = Field(
        300.0, gt=0, description="A send to a paused channel waits this long, then is re-checked."
    )
    policy_pacing_lease_seconds: float = Field(
        120.0, gt=0, description="Longest a send may hold its pacing slot in flight."
    )
    policy_optout_confirmation_grace_seconds: float = Field(
        86400.0, ge=0, description="An opt-out confirmation may follow the opt-out this long."
    )

    @field_validator("policy_whatsapp_web_warmup", mode="before")
    @classmethod
    def _split_warmup(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return [int(part) for part in value.split(",") if part.strip()]
            except ValueError:
                raise ValueError("expected daily limits like 20,30,45 (whole numbers)") from None
        return value

    @field_validator("policy_whatsapp_web_warmup")
    @classmethod
    def _check_warmup(cls, value: list[int]) -> list[int]:
        if any(n < 1 for n in value):
            raise ValueError("each warm-up day's limit must be at least 1")
        return value

    @model_validator(mode="after")
    def _check_whatsapp_cloud(self) -> DispatchSettings:
        if (self.whatsapp_cloud_phone_id is None) != (self.whatsapp_cloud_token is None):
            raise ValueError(
                "set both WHATSAPP_CLOUD_PHONE_ID and WHATSAPP_CLOUD_TOKEN, or neither"
            )
        return self

    @property
    def whatsapp_cloud_configured(self) -> bool:
        return self.whatsapp_cloud_phone_id is not None and self.whatsapp_cloud_token is not None

    # --- Email (SMTP) ---
    smtp_host: str | None = Field(None, description="SMTP server; unset disables email.")
    smtp_port: int | None = Field(
        None, ge=1, le=65535, description="Unset: 587 for starttls, 465 for tls, 25 for none."
    )
    smtp_user: str | None = Field(None, description="Login name; unset sends without AUTH.")
    smtp_password: SecretStr | None = None
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="STARTTLS upgrade, implicit TLS from the first byte, or plain."
    )
    smtp_ca_file: Path | None = Field(
        None, description="CA bundle that signs the server's certificate; unset: the system's."
    )
    smtp_from: str | None = Field(None, description="Envelope and header sender address.")
    smtp_from_name: str | None = Field(None, description="Display name on the From header.")
    smtp_relay_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Domains (and their subdomains) a company may send From through the"
        " platform's relay, comma-separated; SMTP_FROM's domain always may, '*' lets any"
        " (only when the relay itself checks senders). Other senders are refused.",
    )
    smtp_timeout_seconds: float = Field(30.0, gt=0, description="Per SMTP command.")
    smtp_max_connections: int = Field(4, ge=1, le=100, description="SMTP sessions at once.")
    smtp_message_id_domain: str | None = Field(
        None, description="Right-hand side of Message-IDs and the EHLO name; unset: SMTP_FROM's."
    )
    email_default_subject: str = Field(
        "A message from {company}",
        description="Subject when neither the template nor the company sets one.",
    )
    email_unsubscribe_mailto: str | None = Field(
        None, description="Also offer mailto: unsubscribe in List-Unsubscribe."
    )
    email_unsubscribe_footer: bool = Field(True, description="Unsubscribe link under the body.")
    email_open_tracking: bool = Field(True, description="Open pixel in the HTML part.")
    email_click_tracking: bool = Field(True, description="Route http(s) links via ingest.")

    # --- Outbound webhooks (WEBHOOK_ALLOW_PRIVATE_NETWORKS is in the common settings) ---
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=60, description="Whole delivery attempt: resolve, connect, send, answer."
    )
    webhook_max_response_bytes: int = Field(
        16_384, ge=0, le=1_048_576, description="Response body read at most; the rest is dropped."
    )
    webhook_disable_after_failures: int = Field(
        5, ge=1, description="Disable an endpoint after this many failed deliveries in a row."
    )

    # --- WhatsApp Web (Playwright + Debian's Chromium) ---
    whatsapp_web_enabled: bool = False
    whatsapp_web_url: str = Field("https://web.whatsapp.com", description="WhatsApp Web's base.")
    whatsapp_web_chromium_path: Path = Field(
        Path("/usr/bin/chromium"), description="The system Chromium Playwright launches."
    )
    whatsapp_web_profile_dir: Path = Field(
        Path(".data/whatsapp-web"), description="One browser profile per account below this."
    )
    whatsapp_web_account: str = Field(
        "default", pattern=ACCOUNT_PATTERN, description="Account used when no mapping applies."
    )
    whatsapp_web_company_accounts: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="company_id=account pairs, comma separated."
    )
    whatsapp_web_headless: bool = True
    whatsapp_web_user_agent: str | None = Field(
        None, description="Unset: a desktop Chrome agent with the installed Chromium's version."
    )
    whatsapp_web_typing_delay_min_ms: float = Field(35.0, ge=0)
    whatsapp_web_typing_delay_max_ms: float = Field(140.0, ge=0)
    whatsapp_web_load_timeout_seconds: float = Field(
        60.0, gt=0, description="For the chat (or the login screen) to appear."
    )
    whatsapp_web_sent_timeout_seconds: float = Field(
        30.0, gt=0, description="For the outgoing bubble to appear after clicking send."
    )
    whatsapp_web_login_timeout_seconds: float = Field(
        300.0, gt=0, description="How long the login command waits for the QR to be scanned."
    )
    whatsapp_web_wa_js_path: Path = Field(
        Path(".tools/wa-js/wppconnect-wa.js"),
        description="The pinned @wppconnect/wa-js bundle injected into the page (`make install`"
        " puts it there; the dispatch image at /opt/wa-js).",
    )
    whatsapp_web_typing_max_seconds: float = Field(
        30.0, ge=0, description="Longest 'typing…' shown before a send, however long the text."
    )
    whatsapp_web_listen: bool = Field(
        True,
        description="Keep every linked account's browser open to receive messages, "
        "acknowledgements and health; off, a browser opens on its first send only.",
    )
    whatsapp_web_lease_seconds: float = Field(
        60.0,
        ge=5,
        description="How long a replica's claim on an account's browser lasts "
        "unless renewed; another replica takes the account over after it.",
    )
    whatsapp_web_supervise_seconds: float = Field(
        15.0, gt=0, description="How often leases are renewed and accounts opened or closed."
    )
    whatsapp_web_probe_seconds: float = Field(
        120.0, gt=0, description="How often each account's health is probed."
    )
    whatsapp_web_timelock_pause_seconds: float = Field(
        86400.0,
        gt=0,
        description="How long WhatsApp's reach-out timelock (463) pauses an "
        "account's first contacts before they are tried again.",
    )
    whatsapp_web_restriction_pause_seconds: float = Field(
        86400.0, gt=0, description="How long refusals in a row pause an account."
    )
    whatsapp_web_refusals_to_pause: int = Field(
        3, ge=1, description="Refused sends in a row (without a known code) that pause it."
    )
    whatsapp_web_inactivity_reminder_days: float = Field(
        12.0,
        gt=0,
        lt=14,
        description="Remind this many days after the phone was last used; "
        "WhatsApp logs linked devices out after 14.",
    )
    whatsapp_web_catchup_per_chat: int = Field(
        20, ge=1, le=200, description="Recent messages read per chat when catching up."
    )
    whatsapp_web_replica_id: str | None = Field(
        None, max_length=200, description="This replica's name in account leases; unset: host:pid."
    )

    @field_validator("whatsapp_web_company_accounts", mode="before")
    @classmethod
    def _parse_company_accounts(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [p for p in value.replace(" ", "").split(",") if p]
            try:
                return dict(p.split("=", 1) for p in pairs)
            except ValueError:
                raise ValueError("expected company_id=account pairs, comma separated") from None
        return value

    @field_validator("whatsapp_web_company_accounts")
    @classmethod
    def _check_company_accounts(cls, value: dict[str, str]) -> dict[str, str]:
        for company, account in value.items():
            if not re.fullmatch(ACCOUNT_PATTERN, account):
                raise ValueError(
                    f"account name {account!r} (for {company}) must match {ACCOUNT_PATTERN}"
                )
        return {company.lower(): account for company, account in value.items()}

    @model_validator(mode="after")
    def _check_channels(self) -> DispatchSettings:
        if self.smtp_host and not self.smtp_from:
            raise ValueError("SMTP_HOST is set, so SMTP_FROM (the sender address) is required")
        if self.smtp_user and self.smtp_password is None:
            raise ValueError("SMTP_USER is set, so SMTP_PASSWORD is required")
        if self.whatsapp_web_typing_delay_min_ms > self.whatsapp_web_typing_delay_max_ms:
            raise ValueError(
                "WHATSAPP_WEB_TYPING_DELAY_MIN_MS exceeds WHATSAPP_WEB_TYPING_DELAY_MAX_MS"
            )
        return self

    @property
    def smtp_port_effective(self) -> int:
        if self.smtp_port is not None:
            return self.smtp_port
        return {"starttls": 587, "tls": 465, "none": 25}[self.smtp_security]

    def whatsapp_web_account_for(self, company_id: object) -> str:
        """The WhatsApp Web account (browser profile) that sends for `company_id`."""
        return self.whatsapp_web_company_accounts.get(
            str(company_id).lower(), self.whatsapp_web_account
        )
