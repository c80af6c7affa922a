"""Collections on disk: create/open them, add documents, search, delete, list, stats.

``KnowledgeBaseManager(root, embedder_factory)`` is what the CLI and the HTTP routes share. Each
collection lives in ``root/NAME/`` (``collection.json`` + the LanceDB directory, or a pointer to a
Milvus collection). All methods are synchronous and thread-safe; the server calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .chunking import TokenCounter, chunk_text, embedder_token_counter
from .documents import AddReport, Document
from .errors import (
    BadDocumentError,
    CollectionNotFoundError,
    DocumentNotFoundError,
    KBError,
    RerankUnavailableError,
    SettingsMismatchError,
    out_of_space_as_storage_full,
)
from .filters import parse_filter
from .keywords import segment
from .search import MODES, Mode, candidates_for, reciprocal_rank_fusion, rerank_hits
from .settings import (
    ChunkingSettings,
    CollectionSettings,
    check_name,
    default_chunking,
    read_settings,
    write_settings,
)
from .store import ChunkBatch, ChunkStore, DocumentInfo, Hit

log = logging.getLogger("qwembed.kb")

EmbedderFactory = Callable[[str], Any]  # model → qwembed.engine.Embedder (or the same interface)
RerankerFactory = Callable[[str], Any]  # model → qwembed.backends.Reranker
_PROBE = "qwembed fingerprint: the quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。"
_FINGERPRINT_SIZE = 64
_FINGERPRINT_MIN_COSINE = 0.95  # same weights on another device/dtype stay > 0.99; another model ≈ 0


def default_kb_dir() -> Path:
    """``$QWEMBED_KB_DIR``, else ``$XDG_DATA_HOME/qwembed/kb`` (``~/.local/share/qwembed/kb``)."""
    if os.environ.get("QWEMBED_KB_DIR"):
        return Path(os.environ["QWEMBED_KB_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "qwembed" / "kb"


def _fingerprint(embedder, dimensions: int | None) -> list[float]:
    vector = embedder.embed([_PROBE], input_type="document", dimensions=dimensions)[0]
    return [round(float(x), 5) for x in vector[:_FINGERPRINT_SIZE]]


def open_store(settings: CollectionSettings, directory: Path, ann_threshold: int | None = None) -> ChunkStore:
    """``lance`` (default, inside the collection directory) or a Milvus URI (see docs)."""
    uri = settings.store
    if uri == "lance":
        from .lance_store import ANN_THRESHOLD, LanceStore

        return LanceStore(
            directory / "lance", settings.vector_dimension, ann_threshold=ann_threshold or ANN_THRESHOLD
        )
    from .milvus_store import MilvusStore, milvus_uri

    return MilvusStore(
        milvus_uri(uri, directory),
        f"qwembed_{settings.name}".replace("-", "_").replace(".", "_"),
        settings.vector_dimension,
    )


@dataclass(frozen=True)
class Stats:
    settings: CollectionSettings
    documents: int
    chunks: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.settings.name,
            "documents": self.documents,
            "chunks": self.chunks,
            "settings": self.settings.public(),
        }


class Collection:
    def __init__(self, settings: CollectionSettings, store: ChunkStore, manager: KnowledgeBaseManager):
        self.settings = settings
        self.store = store
        self._manager = manager
        self._write = threading.Lock()  # one writer per collection in this process
        self._counter: tuple[TokenCounter, int] | None = None

    # ---- the model, checked against the stored settings ------------------------------------
    def embedder(self):
        embedder = self._manager.embedder(self.settings.model)
        s = self.settings
        if embedder.name != s.model_name or embedder.dimension != s.model_dimension:
            raise SettingsMismatchError(
                f"collection {s.name!r} was built with {s.model_name} ({s.model_dimension} dims); "
                f"the loaded model is {embedder.name} ({embedder.dimension} dims)",
                "model",
            )
        return embedder

    def _token_counter(self) -> tuple[TokenCounter, int]:
        if self._counter is None:
            self._counter = embedder_token_counter(self.embedder())
        return self._counter

    # ---- writes ---------------------------------------------------------------------------
    def add(self, documents: Sequence[Document]) -> AddReport:
        """Add or replace; when this returns, every document not in ``failed`` is durable."""
        report = AddReport()
        latest: dict[str, Document] = {}
        for document in documents:  # the last copy of a repeated id wins
            try:
                document.validate()
                document.metadata_json()
            except BadDocumentError as error:
                report.failed.append((str(document.id), str(error)))
                continue
            latest.pop(document.id, None)
            latest[document.id] = document
        if not latest:
            return report
        hashes = {doc_id: doc.content_hash() for doc_id, doc in latest.items()}
        with self._write:
            existing = self.store.document_hashes(list(latest))
            batch = ChunkBatch()
            vectors: list[np.ndarray] = []
            texts_to_embed: list[str] = []
            embed_rows: list[int] = []
            written: list[str] = []
            for doc_id, document in latest.items():
                if existing.get(doc_id) == hashes[doc_id]:
                    report.unchanged.append(doc_id)
                    continue
                try:
                    pieces = self._pieces(document)
                except KBError as error:
                    report.failed.append((doc_id, str(error)))
                    continue
                metadata = document.metadata_json()
                for position, (text, vector) in enumerate(pieces):
                    batch.chunk_id.append(f"{doc_id}#{position}")
                    batch.document_id.append(doc_id)
                    batch.position.append(position)
                    batch.chunk_count.append(len(pieces))
                    batch.text.append(text)
                    batch.source.append(document.source)
                    batch.metadata.append(metadata)
                    batch.content_hash.append(hashes[doc_id])
                    if vector is None:
                        embed_rows.append(len(vectors))
                        texts_to_embed.append(text)
                        vectors.append(np.empty(0, np.float32))
                    else:
                        vectors.append(vector)
                written.append(doc_id)
                (report.replaced if doc_id in existing else report.added).append(doc_id)
            if not written:
                return report
            if texts_to_embed:
                embedded = self._manager.run_embed(
                    self.embedder(),
                    texts_to_embed,
                    input_type="document",
                    dimensions=self.settings.dimensions,
                )
                for row, vector in zip(embed_rows, embedded, strict=True):
                    vectors[row] = vector
            batch.vectors = np.stack(vectors).astype(np.float32)
            batch.keywords = [segment(text) for text in batch.text]
            with out_of_space_as_storage_full("none of these documents was stored"):
                self.store.replace_documents(written, batch)
            report.chunks = len(batch)
        return report

    def _pieces(self, document: Document) -> list[tuple[str, np.ndarray | None]]:
        if document.chunks is not None:
            pieces = []
            for text, vector in document.chunks:
                array = np.asarray(vector, dtype=np.float32)
                if array.shape != (self.settings.vector_dimension,):
                    raise SettingsMismatchError(
                        f"precomputed vectors must have {self.settings.vector_dimension} components, "
                        f"got shape {array.shape}",
                        "dimensions",
                    )
                norm = float(np.linalg.norm(array))
                if not np.isfinite(norm) or norm == 0:
                    raise BadDocumentError("a precomputed vector is zero or not finite")
                pieces.append((text, array / norm))
            return pieces
        count, overhead = self._token_counter()
        chunks = chunk_text(document.text, self.settings.chunking, count, overhead)
        if not chunks:
            raise BadDocumentError("the document has no text")
        return [(chunk.text, None) for chunk in chunks]

    def delete(self, document_id: str) -> None:
        with self._write, out_of_space_as_storage_full("the document was not deleted"):
            if not self.store.delete_documents([document_id]):
                raise DocumentNotFoundError(
                    f"no document {document_id!r} in collection {self.settings.name!r}", "id"
                )

    # ---- reads ----------------------------------------------------------------------------
    def search(
        self,
        query: str,
        *,
        k: int = 5,
        mode: Mode = "hybrid",
        filter: dict[str, Any] | None = None,
        rerank: str | Any | None = None,
    ) -> list[Hit]:
        """``rerank``: a model name (loaded by the manager's reranker factory) or a reranker object."""
        if mode not in MODES:
            raise KBError(f"mode must be one of {', '.join(MODES)}", "mode")
        if not 1 <= k <= 1000:
            raise KBError("k must be between 1 and 1000", "k")
        if not query.strip():
            raise KBError("query is empty", "query")
        where = parse_filter(filter)
        reranker = self._manager.reranker(rerank) if isinstance(rerank, str) else rerank
        depth = candidates_for(k, reranker is not None)
        lists: list[list[Hit]] = []
        if mode in ("dense", "hybrid"):
            vector = self._manager.run_embed(
                self.embedder(),
                [query],
                input_type="query",
                instruction=self.settings.query_instruction,
                dimensions=self.settings.dimensions,
            )[0]
            lists.append(self.store.dense_search(vector, depth, where))
        if mode in ("keyword", "hybrid"):
            lists.append(self.store.keyword_search(segment(query), depth, where))
        hits = lists[0] if len(lists) == 1 else reciprocal_rank_fusion(lists, depth)
        if reranker is not None:
            return rerank_hits(reranker, query, hits, k)
        return hits[:k]

    def documents(self, limit: int = 100, offset: int = 0) -> list[DocumentInfo]:
        return self.store.list_documents(limit, offset)

    def stats(self) -> Stats:
        return Stats(self.settings, self.store.count_documents(), self.store.count_chunks())

    def maintain(self) -> list[str]:
        with out_of_space_as_storage_full("maintenance stopped; the documents are intact"):
            return self.store.maintain()


class KnowledgeBaseManager:
    """Entry point: ``KnowledgeBaseManager(root, embedder_factory, reranker_factory=None)``.

    ``embedder_factory(model)`` returns an object with the :class:`qwembed.engine.Embedder`
    interface; it is called once per model and cached. ``reranker_factory(model)`` likewise for
    ``rerank`` in search (without one, a rerank request is an error). ``file_roots`` are the only
    folders the HTTP API may read files from.
    """

    def __init__(
        self,
        root: Path,
        embedder_factory: EmbedderFactory,
        *,
        reranker_factory: RerankerFactory | None = None,
        file_roots: Sequence[Path] = (),
        ann_threshold: int | None = None,
    ):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.file_roots = [Path(p).expanduser().resolve() for p in file_roots]
        self._embedder_factory = embedder_factory
        self._reranker_factory = reranker_factory
        self._ann_threshold = ann_threshold
        self._lock = threading.RLock()
        self._embedders: dict[str, Any] = {}
        self._embed_locks: dict[int, threading.Lock] = {}
        self._rerankers: dict[str, Any] = {}
        self._collections: dict[str, Collection] = {}
        self._fingerprints_checked: set[str] = set()

    # ---- models ---------------------------------------------------------------------------
    def embedder(self, model: str):
        with self._lock:
            if model not in self._embedders:
                embedder = self._embedder_factory(model)
                self._embedders[model] = embedder
                self._embed_locks[id(embedder)] = threading.Lock()
            return self._embedders[model]

    def run_embed(self, embedder, texts: Sequence[str], **options) -> np.ndarray:
        # one forward pass at a time per model: CPU threads are the bottleneck anyway, and the
        # encoders are not documented as safe for concurrent calls
        with self._embed_locks.setdefault(id(embedder), threading.Lock()):
            return embedder.embed(list(texts), **options)

    def reranker(self, model: str):
        if self._reranker_factory is None:
            raise RerankUnavailableError("reranking is not enabled on this server/command")
        with self._lock:
            if model not in self._rerankers:
                self._rerankers[model] = self._reranker_factory(model)
            return self._rerankers[model]

    # ---- collections ----------------------------------------------------------------------
    def _directory(self, name: str) -> Path:
        return self.root / check_name(name)

    def create(
        self,
        name: str,
        model: str,
        *,
        dimensions: int | None = None,
        chunking: ChunkingSettings | dict[str, int] | None = None,
        query_instruction: str | None = None,
        store: str = "lance",
    ) -> tuple[CollectionSettings, bool]:
        """Create, or accept an existing collection with the same settings; → (settings, created)."""
        if isinstance(chunking, dict):
            chunking = ChunkingSettings(**chunking)
        directory = self._directory(name)
        with self._lock:
            existing = read_settings(directory)
            if existing is not None:
                existing.check_request(model=model, dimensions=dimensions, chunking=chunking)
                if query_instruction is not None and query_instruction != existing.query_instruction:
                    raise SettingsMismatchError(
                        f"collection {name!r} has a different query instruction", "instruction"
                    )
                if store != existing.store:
                    raise SettingsMismatchError(f"collection {name!r} lives in {existing.store!r}", "store")
                return existing, False
            embedder = self.embedder(model)
            if dimensions is not None and not 1 <= dimensions <= embedder.dimension:
                raise SettingsMismatchError(
                    f"dimensions must be between 1 and the model's {embedder.dimension}", "dimensions"
                )
            chunking = chunking or default_chunking(embedder.max_tokens)
            chunking.validate(embedder.max_tokens)
            settings = CollectionSettings(
                name=name,
                model=model,
                model_name=embedder.name,
                model_dimension=embedder.dimension,
                dimensions=dimensions,
                chunking=chunking,
                query_instruction=query_instruction,
                store=store,
                fingerprint=_fingerprint(embedder, dimensions),
            )
            # the store first, then the settings file: a crash in between leaves no collection
            # (an orphan store directory is reused by the next create)
            with out_of_space_as_storage_full("the collection was not created"):
                open_store(settings, directory, self._ann_threshold).close()
                write_settings(directory, settings)
            self._fingerprints_checked.add(name)
            return settings, True

    def get(self, name: str) -> Collection:
        directory = self._directory(name)
        with self._lock:
            collection = self._collections.get(name)
            if collection is not None:
                return collection
            settings = read_settings(directory)
            if settings is None:
                raise CollectionNotFoundError(f"no collection named {name!r}", "name")
            collection = Collection(settings, open_store(settings, directory, self._ann_threshold), self)
            self._collections[name] = collection
        return collection

    def check_model(self, name: str) -> None:
        """Compare the loaded model's probe vector with the one stored at creation."""
        collection = self.get(name)
        if name in self._fingerprints_checked:
            return
        stored = np.asarray(collection.settings.fingerprint, dtype=np.float32)
        if stored.size:
            current = np.asarray(_fingerprint(collection.embedder(), collection.settings.dimensions))
            cosine = float(stored @ current / (np.linalg.norm(stored) * np.linalg.norm(current) + 1e-12))
            if cosine < _FINGERPRINT_MIN_COSINE:
                raise SettingsMismatchError(
                    f"the model loaded as {collection.settings.model!r} is not the one collection "
                    f"{name!r} was built with (probe-vector cosine {cosine:.3f})",
                    "model",
                )
        self._fingerprints_checked.add(name)

    def open(self, name: str) -> Collection:
        """``get`` plus the model check: what add and search go through."""
        collection = self.get(name)
        self.check_model(name)
        return collection

    def names(self) -> list[str]:
        return (
            sorted(p.name for p in self.root.iterdir() if read_settings(p) is not None)
            if self.root.is_dir()
            else []
        )

    def all_stats(self) -> list[Stats]:
        return [self.get(name).stats() for name in self.names()]

    def drop(self, name: str) -> None:
        directory = self._directory(name)
        with self._lock:
            if read_settings(directory) is None:
                raise CollectionNotFoundError(f"no collection named {name!r}", "name")
            collection = self._collections.pop(name, None)
            if collection is not None:
                collection.store.close()
            # the settings file goes first so a crash mid-removal leaves no half collection
            (directory / "collection.json").unlink()
            shutil.rmtree(directory, ignore_errors=True)
            self._fingerprints_checked.discard(name)

    # ---- convenience used by the CLI and HTTP ---------------------------------------------
    def add(self, name: str, documents: Sequence[Document]) -> AddReport:
        return self.open(name).add(documents)

    def add_stream(
        self, name: str, documents: Iterable[Document], batch_size: int = 64
    ) -> Iterator[AddReport]:
        """Commit every ``batch_size`` documents; each yielded report is durable."""
        collection = self.open(name)
        pending: list[Document] = []
        for document in documents:
            pending.append(document)
            if len(pending) >= batch_size:
                yield collection.add(pending)
                pending = []
        if pending:
            yield collection.add(pending)

    def search(self, name: str, query: str, **options) -> list[Hit]:
        return self.open(name).search(query, **options)
