"""The storage interface both stores implement: chunks with vectors, keyword terms and metadata.

A store knows nothing about models or chunking; the manager hands it finished rows. Every write
method is one atomic commit, which is what makes "acknowledged = durable, never half a document"
hold across crashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .filters import Condition


@dataclass
class ChunkBatch:
    """Column-wise rows (cheap to hand to Arrow); ``vectors`` is float32 ``(n, dimension)``."""

    chunk_id: list[str] = field(default_factory=list)
    document_id: list[str] = field(default_factory=list)
    position: list[int] = field(default_factory=list)
    chunk_count: list[int] = field(default_factory=list)  # lets a reader verify a document is whole
    text: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)  # canonical JSON text
    content_hash: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.chunk_id)


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    document_id: str
    position: int
    text: str
    source: str
    metadata: dict[str, Any]
    score: float


@dataclass(frozen=True)
class DocumentInfo:
    document_id: str
    source: str
    chunks: int
    content_hash: str
    metadata: dict[str, Any]


class ChunkStore(Protocol):
    dimension: int

    def replace_documents(self, document_ids: Sequence[str], batch: ChunkBatch) -> None:
        """Atomically: the listed documents' old chunks go, ``batch`` comes in (one commit)."""

    def delete_documents(self, document_ids: Sequence[str]) -> int:
        """Remove the documents' chunks atomically; returns how many of the documents existed."""

    def document_hashes(self, document_ids: Sequence[str]) -> dict[str, str]: ...

    def dense_search(self, vector: np.ndarray, k: int, where: Sequence[Condition]) -> list[Hit]:
        """Best first; ``score`` is cosine similarity."""

    def keyword_search(self, terms: str, k: int, where: Sequence[Condition]) -> list[Hit]:
        """BM25 over the whitespace-separated ``terms``; best first."""

    def list_documents(self, limit: int, offset: int) -> list[DocumentInfo]: ...

    def count_documents(self) -> int: ...

    def count_chunks(self) -> int: ...

    def maintain(self) -> list[str]:
        """Index upkeep off the request path (ANN build past a size, FTS merge); what it did."""

    def drop(self) -> None:
        """Delete every chunk and the table/collection itself (``KnowledgeBaseManager.drop``)."""

    def close(self) -> None: ...
