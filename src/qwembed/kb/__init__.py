"""Knowledge base: collections of chunked, embedded documents with dense/keyword/hybrid search.

``KnowledgeBaseManager(root, embedder_factory)`` is the entry point shared by ``qwembed kb`` and
the ``/v1/kb`` routes; docs/knowledge-base.md describes the design and its measurements.
"""

from .documents import AddReport, Document
from .errors import KBError
from .manager import Collection, KnowledgeBaseManager, default_kb_dir
from .settings import ChunkingSettings, CollectionSettings
from .store import Hit

__all__ = [
    "AddReport",
    "ChunkingSettings",
    "Collection",
    "CollectionSettings",
    "Document",
    "Hit",
    "KBError",
    "KnowledgeBaseManager",
    "default_kb_dir",
]
