"""Settings shared by every service, read from the environment or `.env` and validated at start-up.

Each service subclasses `CommonSettings` with its own fields. Settings are built in `main()` and
passed down; nothing here reads the environment at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shvya_common.crypto import SecretBox

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
MIN_LINK_SECRET = 32
# Values that have shipped in examples or earlier defaults: never accepted as a secret.
KNOWN_PLACEHOLDERS = frozenset({"dev-only-link-secret-change-me", "changeme", "change-me"})
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:54320/shvya"


class CommonSettings(BaseSettings):
    """What every SHVYA process needs: where NATS and Postgres are, and how the job bus behaves."""

    # Errors name the bad field but never echo the input, which holds every secret from `.env`.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The test suite sets SHVYA_IGNORE_DOTENV so that a developer's .env (a real
        # OPENAI_API_KEY, say) can never leak into a test or a service a test starts.
        if os.environ.get("SHVYA_IGNORE_DOTENV"):
            return init_settings, env_settings, file_secret_settings
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    # Both URLs may carry a password, so they are secrets: never in a repr, a log or an error.
    nats_url: SecretStr = Field(
        SecretStr(DEFAULT_NATS_URL),
        description="NATS server with JetStream enabled; a comma-separated list for a cluster.",
    )
    nats_stream_replicas: int = Field(
        1, ge=1, le=5, description="Replicas of each stream: 1 on one server, 3 on a cluster."
    )
    database_url: SecretStr = Field(
        SecretStr(DEFAULT_DATABASE_URL), description="PostgreSQL with pgvector."
    )
    nats_prefix: str = Field(
        "shvya",
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description="Prefix of every subject and stream; lets several installs share one NATS.",
    )
    retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 20.0, 60.0, 180.0, 600.0],
        description="Seconds to wait before each retry; after the last one a job is dead-lettered.",
    )
    ack_wait_seconds: float = Field(
        30.0, gt=0, description="How long a worker may go silent on a job before it is redelivered."
    )
    worker_concurrency: int = Field(16, ge=1, le=1024, description="Jobs run at once per worker.")
    p1_reserved_slots: int | None = Field(
        None,
        ge=0,
        description="Slots only replies and follow-ups (priority 95+) may use; default a quarter.",
    )
    worker_low_priority_slots: int | None = Field(
        None,
        ge=1,
        description="Most jobs below priority 95 (summaries, sequences, campaigns, webhooks) a"
        " worker runs at once; default all the slots that are not reserved.",
    )
    worker_poll_seconds: float = Field(
        0.25,
        gt=0,
        description="Idle re-check interval, which bounds how late a delayed retry runs.",
    )
    duplicate_window_seconds: float = Field(
        600.0, gt=0, description="JetStream de-duplication window for published jobs."
    )
    db_pool_min: int = Field(2, ge=1)
    db_pool_max: int = Field(16, ge=1)
    # The job bus's claims, lease renewals, completions and publish confirmations.
    db_bookkeeping_pool_max: int = Field(6, ge=1)
    public_base_url: str = Field(
        "http://127.0.0.1:8000",
        description="Public URL of ingest, used in unsubscribe, open and click links.",
    )
    link_secret: SecretStr | None = Field(
        None,
        description="Signs unsubscribe, open and click links: a random string of at least 32"
        " characters (`make up` writes one). Ingest and dispatch refuse to start without it.",
    )
    secrets_keys: SecretStr | None = Field(
        None,
        description="Keyring for secrets stored in the database: 'id:base64key,...', the first"
        " encrypts (32-byte keys; `shvya keygen` prints one). Needed once a secret is stored.",
    )
    webhook_allow_private_networks: bool = Field(
        False,
        description="Let outbound webhooks reach loopback, private and link-local addresses."
        " Only for tests and air-gapped installs: it turns the SSRF guard off.",
    )
    media_store: Literal["local", "s3"] = Field(
        "local",
        description="Where received media and attachments are kept: `local`, the MEDIA_DIR"
        " folder; `s3`, a bucket of any S3-compatible service (the S3_* settings).",
    )
    media_dir: Path = Field(
        Path(".data/media"), description="Folder where received media and attachments are kept."
    )
    s3_endpoint_url: str | None = Field(
        None,
        pattern=r"^https?://[^/@]+(/.*)?$",
        description="The S3-compatible service's URL (MinIO, Ceph, R2, ...); unset, AWS S3 in"
        " S3_REGION.",
    )
    s3_bucket: str | None = Field(
        None, min_length=3, max_length=63, description="Bucket for media when MEDIA_STORE=s3."
    )
    s3_region: str = Field("us-east-1", min_length=1, description="The bucket's region.")
    s3_access_key_id: SecretStr | None = Field(None, description="Access key id for S3_BUCKET.")
    s3_secret_access_key: SecretStr | None = Field(
        None, description="Secret access key for S3_BUCKET."
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto",
        description="`path` (<endpoint>/<bucket>/<key>, what MinIO and Ceph usually need),"
        " `virtual` (<bucket>.<endpoint host>/<key>), or `auto` (botocore's choice: virtual on"
        " AWS, path for an IP address).",
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        pattern=r"^https?://",
        description="OpenTelemetry collector's OTLP/HTTP base URL (e.g. http://127.0.0.1:4318):"
        " traces go to <url>/v1/traces; unset, no spans are made.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    metrics_port: int = Field(0, ge=0, le=65535, description="0 picks the service's default port.")
    metrics_host: str = "127.0.0.1"

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p for p in value.replace(" ", "").split(",") if p]
            return [float(p) for p in parts]
        return value

    @field_validator("retry_schedule")
    @classmethod
    def _check_schedule(cls, value: list[float]) -> list[float]:
        if not value or any(v <= 0 for v in value):
            raise ValueError("retry_schedule needs at least one positive delay")
        return value

    @model_validator(mode="after")
    def _check_media_store(self) -> CommonSettings:
        if self.media_store == "s3":
            missing = [
                name.upper()
                for name in ("s3_bucket", "s3_access_key_id", "s3_secret_access_key")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"MEDIA_STORE=s3 needs {', '.join(missing)} (see .env.example)")
        return self

    def link_key(self) -> str:
        """LINK_SECRET's value; raises when it is missing, short, or a known placeholder."""
        value = self.link_secret.get_secret_value() if self.link_secret else ""
        if len(value) < MIN_LINK_SECRET or value in KNOWN_PLACEHOLDERS:
            raise ValueError(
                f"LINK_SECRET must be a random string of at least {MIN_LINK_SECRET} characters"
                " (`make up` writes one to .env; or: python3 -c 'import secrets;"
                " print(secrets.token_urlsafe(48))')"
            )
        return value

    def secret_box(self) -> SecretBox | None:
        """The keyring, or None when SECRETS_KEYS is unset."""
        if self.secrets_keys is None:
            return None
        return SecretBox.from_setting(self.secrets_keys.get_secret_value())

    @field_validator("secrets_keys")
    @classmethod
    def _check_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            SecretBox.from_setting(value.get_secret_value())  # a bad keyring stops start-up
        return value

    @property
    def nats_servers(self) -> list[str]:
        return [u.strip() for u in self.nats_url.get_secret_value().split(",") if u.strip()]

    @property
    def dsn(self) -> str:
        """DATABASE_URL itself, for connecting (never for printing)."""
        return self.database_url.get_secret_value()

    @property
    def max_attempts(self) -> int:
        """First try plus one retry for each entry of the schedule."""
        return len(self.retry_schedule) + 1
