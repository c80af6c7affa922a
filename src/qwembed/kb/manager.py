"""Collections on disk: create/open them, add documents, search, delete, list, stats.

``KnowledgeBaseManager(root, embedder_factory)`` is what the CLI and the HTTP routes share. Each
collection lives in ``root/NAME/`` (``collection.json`` + the LanceDB directory, or a pointer to a
Milvus collection). All methods are synchronous and thread-safe; the server calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from ..engine.instructions import EmptyInstructionError, check_instruction
from .chunking import TokenCounter, chunk_text, embedder_token_counter
from .documents import AddReport, Document, shown
from .errors import (
    BadDocumentError,
    CollectionDamagedError,
    CollectionNotFoundError,
    DocumentNotFoundError,
    InvalidSettingError,
    KBError,
    RerankUnavailableError,
    SettingsMismatchError,
    StoreUnavailableError,
    out_of_space_as_storage_full,
)
from .filters import parse_filter
from .keywords import index_terms, segment
from .search import (
    FUSIONS,
    MODES,
    Fusion,
    Mode,
    SearchResults,
    best_per_document,
    candidates_for,
    fuse,
    rerank_hits,
)
from .settings import (
    SETTINGS_FILE,
    ChunkingSettings,
    CollectionSettings,
    check_name,
    check_store,
    default_chunking,
    read_settings,
    write_settings,
)
from .store import ChunkBatch, ChunkStore, DocumentInfo

log = logging.getLogger("qwembed.kb")

MAX_LISTING = 2**31 - 1  # largest limit/offset of a document listing
# One page of a listing over HTTP or the CLI: a larger one is a long answer nobody reads (the
# library call takes up to MAX_LISTING for a program that wants everything at once).
MAX_PAGE = 10_000
MAX_K = 1000  # results per search at most (each is read up to 4k deep, and reranked)
_MAX_DEPTH = 4000  # candidates per list at most, when one document's chunks crowd the top
EmbedderFactory = Callable[[str], Any]  # model → qwembed.engine.Embedder (or the same interface)
RerankerFactory = Callable[[str], Any]  # model → qwembed.backends.Reranker
_PROBE = "qwembed fingerprint: the quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。"
_FINGERPRINT_SIZE = 64
_FINGERPRINT_MIN_COSINE = 0.95  # same weights on another device/dtype stay > 0.99; another model ≈ 0


# Cross-process locks, files in the collection's folder. The threading locks below only order the
# threads of one process, but a server and `qwembed kb add` (or two servers) can share a KB folder:
# without a lock both could find a document missing and both append it — two versions of it.
WRITE_LOCK = "write.lock"  # held around each write's check-and-commit (add, delete, create, drop)
MAINTAIN_LOCK = "maintain.lock"  # one index build at a time; adds go on meanwhile
# How long a write waits for another process's write. The lock is held for a read of the stored
# hashes and one commit (embedding happens before it), so a wait this long means a stuck writer.
WRITE_LOCK_TIMEOUT = 300.0


def collection_not_found(name: str) -> CollectionNotFoundError:
    return CollectionNotFoundError(f"no collection named {name!r}", "name")


def check_exists(directory: Path, name: str) -> None:
    """A collection is its folder's settings file: without it, there is none (never made, dropped
    by another process, or a create that failed part-way)."""
    if not (directory / SETTINGS_FILE).is_file():
        raise collection_not_found(name)


@contextlib.contextmanager
def collection_lock(directory: Path, name: str, *, must_exist: bool = True) -> Iterator[None]:
    """Hold ``directory/write.lock`` (``flock``: released by the kernel if the holder dies, so a
    killed process leaves no stale lock). ``must_exist``: the collection must still be there once
    the lock is held (another process may have dropped it meanwhile)."""
    if must_exist:
        check_exists(directory, name)
    lock = filelock.FileLock(directory / WRITE_LOCK, timeout=WRITE_LOCK_TIMEOUT, is_singleton=True)
    try:
        lock.acquire()
    except FileNotFoundError:  # the folder went while this waited: dropped
        raise collection_not_found(name) from None
    except filelock.Timeout:
        raise StoreUnavailableError(
            f"another process has been writing to collection {name!r} for {WRITE_LOCK_TIMEOUT:g} s "
            f"(it holds {directory / WRITE_LOCK}); nothing was written"
        ) from None
    try:
        if must_exist:
            check_exists(directory, name)
        yield
    finally:
        lock.release()


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


@dataclass(frozen=True)
class UnavailableCollection:
    """A collection that could not be opened or counted, in a listing of all of them: one broken
    collection (a Milvus server down, a damaged settings file) must not hide the others."""

    name: str
    code: str
    message: str
    settings: CollectionSettings | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "documents": None,
            "chunks": None,
            "settings": self.settings.public() if self.settings else None,
            "error": {"code": self.code, "message": self.message},
        }


class Collection:
    def __init__(
        self, settings: CollectionSettings, store: ChunkStore, manager: KnowledgeBaseManager, directory: Path
    ):
        self.settings = settings
        self.store = store
        self.directory = directory
        self._manager = manager
        # one writer per collection in this process; collection_lock orders the processes
        self._write = threading.Lock()
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
    def _check_exists(self) -> None:
        check_exists(self.directory, self.settings.name)

    def add(self, documents: Sequence[Document]) -> AddReport:
        """Add or replace; when this returns, every document not in ``failed`` is durable."""
        if isinstance(documents, str | bytes | Document):
            raise TypeError(f"documents must be a list of Document, not {type(documents).__name__}")
        report = AddReport()
        latest: dict[str, Document] = {}
        for document in documents:  # the last copy of a repeated id wins
            if not isinstance(document, Document):
                raise TypeError(f"documents must hold Document objects, not {type(document).__name__}")
            try:
                document.validate()
                document.metadata_json()
            except BadDocumentError as error:
                report.failed.append((shown(str(document.id)), str(error)))  # printable
                continue
            latest.pop(document.id, None)
            latest[document.id] = document
        if not latest:
            return report
        hashes = {doc_id: doc.content_hash() for doc_id, doc in latest.items()}
        with self._write:
            self._check_exists()  # (dropped by another process since this one opened it?)
            # A first look, so that unchanged documents are neither embedded nor written. Whether
            # a document is added or replaced is decided again under the folder lock below: another
            # process may write the same ids meanwhile (embedding stays outside that lock).
            seen = self.store.document_hashes(list(latest))
            pieces: dict[str, list[tuple[str, np.ndarray | None]]] = {}
            for doc_id, document in latest.items():
                if seen.get(doc_id) == hashes[doc_id]:
                    report.unchanged.append(doc_id)
                    continue
                try:
                    pieces[doc_id] = self._pieces(document)
                except KBError as error:
                    report.failed.append((doc_id, str(error)))
            if not pieces:
                return report
            to_embed = [
                (doc_id, i)
                for doc_id, rows in pieces.items()
                for i, (_, vector) in enumerate(rows)
                if vector is None
            ]
            if to_embed:
                embedded = self._manager.run_embed(
                    self.embedder(),
                    [pieces[doc_id][i][0] for doc_id, i in to_embed],
                    input_type="document",
                    dimensions=self.settings.dimensions,
                )
                for (doc_id, i), vector in zip(to_embed, embedded, strict=True):
                    pieces[doc_id][i] = (pieces[doc_id][i][0], vector)
            terms = {doc_id: [index_terms(text) for text, _ in rows] for doc_id, rows in pieces.items()}
            with (
                out_of_space_as_storage_full("none of these documents was stored"),
                collection_lock(self.directory, self.settings.name),
            ):
                existing = self.store.document_hashes(list(pieces))
                batch = ChunkBatch()
                vectors: list[np.ndarray] = []
                written: list[str] = []
                for doc_id, rows in pieces.items():
                    if existing.get(doc_id) == hashes[doc_id]:  # another process stored this very version
                        report.unchanged.append(doc_id)
                        continue
                    document = latest[doc_id]
                    metadata = document.metadata_json()
                    for position, (text, vector) in enumerate(rows):
                        batch.chunk_id.append(f"{doc_id}#{position}")
                        batch.document_id.append(doc_id)
                        batch.position.append(position)
                        batch.chunk_count.append(len(rows))
                        batch.text.append(text)
                        batch.source.append(document.source)
                        batch.metadata.append(metadata)
                        batch.content_hash.append(hashes[doc_id])
                        assert vector is not None  # (embedded above)
                        vectors.append(vector)
                    batch.keywords += terms[doc_id]
                    written.append(doc_id)
                    (report.replaced if doc_id in existing else report.added).append(doc_id)
                if not written:
                    return report
                batch.vectors = np.stack(vectors).astype(np.float32)
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
        self.delete_many([document_id])

    def delete_many(self, document_ids: Sequence[str]) -> None:
        """All or nothing: when any id is missing, nothing is deleted and the error names every
        missing one; otherwise all go in one commit (LanceDB) or one delete (Milvus)."""
        ids = list(dict.fromkeys(document_ids))
        with self._write, collection_lock(self.directory, self.settings.name):
            present = self.existing(ids)
            missing = [i for i in ids if i not in present]
            if missing:
                names = ", ".join(repr(i) for i in missing)
                plural = "s" if len(missing) > 1 else ""
                nothing = "; nothing was deleted" if len(ids) > 1 else ""
                raise DocumentNotFoundError(
                    f"no document{plural} {names} in collection {self.settings.name!r}{nothing}", "id"
                )
            outcome = "nothing was deleted" if len(ids) > 1 else "the document was not deleted"
            with out_of_space_as_storage_full(outcome):
                self.store.delete_documents(ids)

    def existing(self, document_ids: Sequence[str]) -> set[str]:
        """Which of ``document_ids`` the collection holds."""
        return set(self.store.document_hashes(list(dict.fromkeys(document_ids))))

    # ---- reads ----------------------------------------------------------------------------
    def search(
        self,
        query: str,
        *,
        k: int = 5,
        mode: Mode = "hybrid",
        filter: dict[str, Any] | None = None,
        rerank: str | Any | None = None,
        per_document: bool = True,
        fusion: Fusion = "dbsf",
        rerank_instruction: str | None = None,
    ) -> SearchResults:
        """Best first. ``per_document``: only each document's best chunk (else chunks, so one
        document can fill several places). ``rerank``: a model name (loaded by the manager's
        reranker factory) or a reranker object; ``rerank_instruction`` its task (see
        :meth:`rerank_task`). A query longer than the model's limit is cut to it for the dense side
        (the keyword side reads all of it) and ``warnings`` says so."""
        if mode not in MODES:
            raise KBError(f"mode must be one of {', '.join(MODES)}", "mode")
        if fusion not in FUSIONS:
            raise KBError(f"fusion must be one of {', '.join(FUSIONS)}", "fusion")
        if not 1 <= k <= MAX_K:
            raise KBError(f"k must be between 1 and {MAX_K}", "k")
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, not {type(query).__name__}")
        if not query.strip():
            raise KBError("query is empty", "query")
        task = self.rerank_task(rerank, rerank_instruction)
        self._check_exists()  # (dropped by another process, or by this one through another handle)
        where = parse_filter(filter)
        reranker = self._manager.reranker(rerank) if isinstance(rerank, str) else rerank
        warnings: list[str] = []
        vector = self._query_vector(query, warnings) if mode in ("dense", "hybrid") else None
        terms = segment(query)
        # one document per result: read deeper from the start (documents have several chunks)
        depth = candidates_for(k, reranker is not None or per_document)
        while True:
            dense = self.store.dense_search(vector, depth, where) if vector is not None else []
            keyword = self.store.keyword_search(terms, depth, where) if mode != "dense" else []
            if mode == "hybrid":
                hits = fuse(fusion, dense, keyword, 2 * depth, keyword_complete=len(keyword) < depth)
            else:
                hits = dense or keyword
            if per_document:
                hits = best_per_document(hits)
            wanted = 4 * k if reranker is not None else k
            # one document's chunks can crowd a list: read deeper until k documents are found
            # or the lists have nothing more to give
            exhausted = len(dense) < depth and len(keyword) < depth
            if len(hits) >= wanted or exhausted or depth >= _MAX_DEPTH:
                break
            depth = min(depth * 4, _MAX_DEPTH)
        if reranker is not None:
            hits = rerank_hits(reranker, query, hits[: candidates_for(k, True)], k, instruction=task)
        return SearchResults(hits[:k], warnings)

    def rerank_task(self, rerank: str | Any | None, instruction: str | None) -> str | None:
        """The instruction the rerank stage gives the reranker: ``instruction`` if given, else the
        collection's query instruction (None when it has none: the reranker's own default, web
        search for Qwen3-Reranker).

        A Qwen3-Reranker's instruction is a task description of the same kind as a Qwen3
        embedder's query instruction, and a collection's instruction says what its searches are
        for, so both stages read the same task unless told otherwise. Cross-encoders have no
        instruction slot and ignore one (``CrossEncoderReranker.tokenize_pairs``), so this
        default never fails for them. Checked before anything loads: an instruction without a
        reranker would be dropped silently, an empty one is refused like the embedder's."""
        if instruction is None:
            return self.settings.query_instruction if rerank is not None else None
        if rerank is None:
            raise KBError("rerank_instruction needs rerank (a reranker to give it to)", "rerank_instruction")
        if not isinstance(instruction, str):
            raise KBError("rerank_instruction must be a string", "rerank_instruction")
        try:
            check_instruction(instruction)
        except EmptyInstructionError:
            raise KBError(
                "rerank_instruction is empty: leave it out (null in JSON) for the collection's query "
                "instruction, or the reranker's default where the collection has none",
                "rerank_instruction",
            ) from None
        return instruction

    def _query_vector(self, query: str, warnings: list[str]) -> np.ndarray:
        embedder = self.embedder()
        options = {
            "input_type": "query",
            "instruction": self.settings.query_instruction,
            "dimensions": self.settings.dimensions,
        }
        try:
            return self._manager.run_embed(embedder, [query], **options)[0]
        except ValueError as error:  # InputTooLongError; any other error fails again below
            reason = str(error)
        vector = self._manager.run_embed(embedder, [query], truncate=True, **options)[0]
        # only truncation differed between the two calls, so the first one failed on length
        message = (
            f"the query is longer than the model's {embedder.max_tokens} tokens: the dense search "
            "read its beginning only (the keyword search all of it)"
        )
        log.warning("%s (%s)", message, reason)
        warnings.append(message)
        return vector

    def documents(self, limit: int = 100, offset: int = 0) -> list[DocumentInfo]:
        # LanceDB takes both as unsigned 32-bit numbers (larger ones are an OverflowError)
        if not 1 <= limit <= MAX_LISTING:
            raise KBError(f"limit must be between 1 and {MAX_LISTING}", "limit")
        if not 0 <= offset <= MAX_LISTING:
            raise KBError(f"offset must be between 0 and {MAX_LISTING}", "offset")
        return self.store.list_documents(limit, offset)

    def stats(self) -> Stats:
        return Stats(self.settings, self.store.count_documents(), self.store.count_chunks())

    def maintain(self) -> list[str]:
        """Index upkeep (see ``LanceStore.maintain``); nothing when another process is at it.

        Not under the write lock: an index build can take minutes, and LanceDB commits it next to
        concurrent adds (rows added meanwhile are searched exactly until the next run). The
        maintenance lock only keeps two processes from building the same index twice at once."""
        self._check_exists()
        lock = filelock.FileLock(self.directory / MAINTAIN_LOCK, blocking=False, is_singleton=True)
        with out_of_space_as_storage_full("maintenance stopped; the documents are intact"):
            try:
                lock.acquire()
            except filelock.Timeout:
                return []  # another process is at it
            try:
                return self.store.maintain()
            finally:
                lock.release()


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
        check_store(store)  # before a model loads: a typo fails at once
        try:
            check_instruction(query_instruction)  # else every search of the collection would fail
        except EmptyInstructionError as error:
            raise KBError(str(error), "instruction") from None
        directory = self._directory(name)
        # the folder lock: two processes creating one collection at once get one settings file,
        # and the second compares its request with it (same → created: false, else 409)
        # (a create that fails leaves the folder with only its lock file: not a collection to
        # ``names``, and reused by the next create; the lock file itself must stay, since another
        # process may be waiting on it)
        with (
            self._lock,
            out_of_space_as_storage_full("the collection was not created"),
            collection_lock(directory, name, must_exist=False),
        ):
            return self._create_locked(directory, name, model, dimensions, chunking, query_instruction, store)

    def _create_locked(
        self,
        directory: Path,
        name: str,
        model: str,
        dimensions: int | None,
        chunking: ChunkingSettings | None,
        query_instruction: str | None,
        store: str,
    ) -> tuple[CollectionSettings, bool]:
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
            raise InvalidSettingError(
                "dimensions", dimensions, f"between 1 and the model's width, {embedder.dimension}"
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
                raise collection_not_found(name)
            store = open_store(settings, directory, self._ann_threshold)
            collection = Collection(settings, store, self, directory)
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
        """Every folder with a settings file, readable or not (``all_stats`` reports the latter)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / SETTINGS_FILE).is_file())

    def all_stats(self) -> list[Stats | UnavailableCollection]:
        """Every collection's counts; one that cannot be opened or counted is listed with its error
        instead of failing the listing."""
        listing: list[Stats | UnavailableCollection] = []
        for name in self.names():
            try:
                listing.append(self.get(name).stats())
            except Exception as error:
                code = error.code if isinstance(error, KBError) else "collection_unavailable"
                message = str(error) if isinstance(error, KBError) else f"{type(error).__name__}: {error}"
                log.info("collection %r is unavailable: %s", name, message)
                try:
                    settings = read_settings(self._directory(name))
                except KBError:
                    settings = None
                listing.append(UnavailableCollection(name, code, message.splitlines()[0], settings))
        return listing

    def drop(self, name: str) -> None:
        """Delete a collection: its documents, vectors and settings (a Milvus collection is
        dropped on its server first; if that fails, nothing is removed)."""
        directory = self._directory(name)
        # under the folder lock: another process's add waits, then finds the collection gone
        # (CollectionNotFoundError) instead of writing into a folder being deleted; the lock
        # checks the collection is there before and after it waits
        with self._lock, collection_lock(directory, name):
            try:
                settings = read_settings(directory)
            except CollectionDamagedError:  # unreadable settings: its folder can still go
                log.warning("dropping %r without reading its settings: a Milvus collection stays", name)
                settings = None
            collection = self._collections.pop(name, None)
            if settings is not None and settings.store != "lance":  # Lance lives in the folder
                store = collection.store if collection else open_store(settings, directory)
                store.drop()
            elif collection is not None:
                collection.store.close()
            # the settings file goes first so a crash mid-removal leaves no half collection
            (directory / SETTINGS_FILE).unlink()
            shutil.rmtree(directory, ignore_errors=True)
            self._fingerprints_checked.discard(name)

    # ---- convenience used by the CLI and HTTP ---------------------------------------------
    def add(self, name: str, documents: Sequence[Document]) -> AddReport:
        return self.open(name).add(documents)

    def add_stream(
        self, name: str, documents: Iterable[Document], batch_size: int = 64
    ) -> Iterator[AddReport]:
        """Commit every ``batch_size`` documents; each yielded report is durable."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            # (0 or less committed one document at a time, silently: the CLI refuses it too)
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        collection = self.open(name)
        pending: list[Document] = []
        for document in documents:
            pending.append(document)
            if len(pending) >= batch_size:
                yield collection.add(pending)
                pending = []
        if pending:
            yield collection.add(pending)

    def search(self, name: str, query: str, **options) -> SearchResults:
        return self.open(name).search(query, **options)
