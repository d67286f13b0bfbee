"""Ingest settings: where to listen, limits on what it accepts, and the admin token."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from shvya_common.settings import CommonSettings


class IngestSettings(CommonSettings):
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8000, ge=1, le=65535)
    http_workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    admin_token: SecretStr = Field(
        ..., description="Bearer token for /admin/*; at least 16 characters."
    )
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

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if len(token) < 16 or token.lower() in {"changeme", "change-me-please", "secret"}:
            raise ValueError("ADMIN_TOKEN must be a random string of at least 16 characters")
        return value
