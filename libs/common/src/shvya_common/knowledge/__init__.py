"""The knowledge base: documents cut into chunks, embedded, and searched by meaning and by words.

Ingest writes it (`KnowledgeBase`), engage reads it (`retrieve`), and `shvya reembed` brings its
vectors up to date after a change of model. The pieces:

- `chunking`: markdown and plain text into overlapping chunks under their headings;
- `embedders`: the `Embedder` protocol, `OpenAIEmbedder`, `LocalEmbedder`, `open_embedder`;
- `documents`: `KnowledgeBase`, which converts, chunks, embeds and stores documents;
- `retrieval`: `retrieve()`, hybrid vector + keyword search fused by reciprocal rank;
- `reembed`: re-embedding after a model or vector-size change;
- `settings`: `KnowledgeSettings`, the fields every service that touches the KB reads.
"""

from shvya_common.knowledge.chunking import Chunk, chunk_document
from shvya_common.knowledge.documents import (
    KnowledgeBase,
    KnowledgeConfigError,
    NewDocument,
    StoredDocument,
)
from shvya_common.knowledge.embedders import (
    Embedder,
    EmbedderUnavailable,
    LocalEmbedder,
    OpenAIEmbedder,
    build_embedder,
    open_embedder,
)
from shvya_common.knowledge.htmltext import html_to_text
from shvya_common.knowledge.reembed import ReembedReport, reembed
from shvya_common.knowledge.repository import DocumentInfo
from shvya_common.knowledge.retrieval import Retrieval, RetrievedChunk, fuse, retrieve
from shvya_common.knowledge.settings import KnowledgeSettings

__all__ = [
    "Chunk",
    "DocumentInfo",
    "Embedder",
    "EmbedderUnavailable",
    "KnowledgeBase",
    "KnowledgeConfigError",
    "KnowledgeSettings",
    "LocalEmbedder",
    "NewDocument",
    "OpenAIEmbedder",
    "ReembedReport",
    "Retrieval",
    "RetrievedChunk",
    "StoredDocument",
    "build_embedder",
    "chunk_document",
    "fuse",
    "html_to_text",
    "open_embedder",
    "reembed",
    "retrieve",
]
