"""Engage settings: the OpenAI-compatible endpoint and how much history a reply sees."""

from __future__ import annotations

from pydantic import Field, SecretStr

from shvya_common.settings import CommonSettings


class EngageSettings(CommonSettings):
    openai_api_key: SecretStr | None = Field(
        None, description="Key for the chat API; unset means the labelled offline responder."
    )
    openai_base_url: str | None = Field(
        None, description="OpenAI-compatible base URL (vLLM, Ollama, a proxy); unset = OpenAI."
    )
    openai_timeout_seconds: float = Field(30.0, gt=0)
    default_model: str = Field("gpt-4o-mini", description="Model when a company sets none.")
    history_messages: int = Field(20, ge=0, le=200, description="Recent messages in a prompt.")
