"""The cluster store: a Milvus collection through ``pymilvus.MilvusClient``.

For Milvus Standalone/Distributed (``milvus://host:19530``, ``http(s)://…``) and Milvus Lite
(``milvus-lite:/path/file.db``, a local file; what the tests exercise). Dense search uses a
COSINE index on ``vector``; keyword search Milvus's own BM25 function over the same jieba-
segmented ``keywords`` text the LanceDB store indexes.

Unlike LanceDB, Milvus has no multi-row transaction: replacing a document is an upsert of its new
chunks followed by a delete of its stale ones, so a crash in between can leave old tail chunks
next to the new ones until the document is added again. Readers skip chunks whose
``content_hash`` differs from their document's first chunk (see ``_consistent``), so a
half-replaced document never shows mixed versions in results.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import StoreUnavailableError
from .filters import Condition
from .settings import check_store
from .store import ChunkBatch, DocumentInfo, Hit

_OUTPUT = ["chunk_id", "document_id", "position", "text", "source", "metadata", "content_hash"]
_OPS = {"$eq": "==", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
# jieba in Milvus re-reads our pre-segmented text: the spaces keep our segmentation, and both
# Milvus Lite and servers ship it (Milvus Lite has no "whitespace" tokenizer).
ANALYZER = {"tokenizer": "jieba", "filter": ["lowercase"]}
_MAX_TEXT = 65535
# Seconds to wait for a Milvus server to answer before "cannot connect" (pymilvus's own default is
# 10 s; a refused connection fails at once either way, a silent host takes the whole wait).
CONNECT_TIMEOUT = 5.0


def milvus_uri(store: str, directory: Path) -> str:
    check_store(store)
    if store.startswith("milvus-lite:"):
        path = Path(store.removeprefix("milvus-lite:") or "milvus.db")
        return str(path if path.is_absolute() else directory / path)
    if store.startswith("milvus://"):
        return "http://" + store.removeprefix("milvus://")
    return store


def _held_by_another_process(database: Path) -> bool:
    """Milvus Lite keeps an exclusive ``flock`` on ``FILE.db/LOCK`` while a process has it open."""
    import fcntl

    lock = database / "LOCK"
    if not lock.is_file():
        return False
    descriptor = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # closing releases the lock if we got it
    return False


class _QuietLockFailure(logging.Filter):
    """Milvus Lite logs a traceback when another process holds the file; we raise a one-line
    ``StoreUnavailableError`` that says so instead, so that traceback is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return type(error).__name__ != "DataDirLockedError"


class _QuietMissingTimestamp(logging.Filter):
    """pymilvus 3 asks for a timestamp (``AllocTimestamp``) while waiting for a new index; Milvus
    Lite's gRPC server lacks that call, logs a traceback, and pymilvus carries on without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or not isinstance(record.exc_info[1], NotImplementedError):
            return True
        frames = traceback.extract_tb(record.exc_info[2])
        return not any(frame.name == "AllocTimestamp" for frame in frames)


logging.getLogger("milvus_lite.server_manager").addFilter(_QuietLockFailure())
logging.getLogger("grpc._server").addFilter(_QuietMissingTimestamp())


def _connect(uri: str):
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    try:
        return MilvusClient(uri, token=os.environ.get("QWEMBED_MILVUS_TOKEN", ""), timeout=CONNECT_TIMEOUT)
    except MilvusException as error:
        if not uri.startswith("http"):
            if _held_by_another_process(Path(uri)):
                raise StoreUnavailableError(
                    f"the Milvus Lite file {uri} is open in another process (a running server?); "
                    "Milvus Lite lets one process at a time use a file: stop that process, or go "
                    "through its /v1/kb routes"
                ) from None
            raise StoreUnavailableError(f"cannot open the Milvus Lite file {uri}: {error.message}") from None
        raise StoreUnavailableError(
            f"cannot connect to Milvus at {uri} within {CONNECT_TIMEOUT:g} s: {error.message}"
        ) from None


def _literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def compile_expr(conditions: Sequence[Condition]) -> str:
    parts: list[str] = []
    for c in conditions:
        field = c.field if c.is_column else f'metadata["{c.field}"]'
        if c.op == "$in":
            assert isinstance(c.value, tuple)
            parts.append(f"{field} in [{', '.join(_literal(v) for v in c.value)}]")
        else:
            parts.append(f"{field} {_OPS[c.op]} {_literal(c.value)}")
    return " and ".join(f"({p})" for p in parts)


def _in(field: str, values: Sequence[str]) -> str:
    return f"{field} in [{', '.join(_literal(v) for v in values)}]"


class MilvusStore:
    def __init__(self, uri: str, collection: str, dimension: int):
        from pymilvus import DataType, Function, FunctionType
        from pymilvus.client.types import LoadState

        self.dimension = dimension
        self.collection = collection
        if not uri.startswith("http"):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        self._client = _connect(uri)
        if self._client.has_collection(collection):
            # Milvus Lite starts every process with its collections released (a server keeps
            # them loaded); searches, queries and counts need them loaded
            if self._client.get_load_state(collection)["state"] != LoadState.Loaded:
                self._client.load_collection(collection)
            return
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=1024)
        schema.add_field("document_id", DataType.VARCHAR, max_length=1024)
        schema.add_field("position", DataType.INT32)
        schema.add_field("chunk_count", DataType.INT32)
        schema.add_field("text", DataType.VARCHAR, max_length=_MAX_TEXT)
        schema.add_field(
            "keywords", DataType.VARCHAR, max_length=_MAX_TEXT, enable_analyzer=True, analyzer_params=ANALYZER
        )
        schema.add_field("source", DataType.VARCHAR, max_length=4096)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name="bm25",
                function_type=FunctionType.BM25,
                input_field_names=["keywords"],
                output_field_names=["sparse"],
            )
        )
        index = self._client.prepare_index_params()
        # AUTOINDEX lets the server pick (HNSW on Standalone); Milvus Lite maps it to FLAT
        index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="COSINE")
        index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        self._client.create_collection(collection, schema=schema, index_params=index)

    def replace_documents(self, document_ids: Sequence[str], batch: ChunkBatch) -> None:
        assert batch.vectors is not None
        rows = [
            {
                "chunk_id": batch.chunk_id[i],
                "document_id": batch.document_id[i],
                "position": batch.position[i],
                "chunk_count": batch.chunk_count[i],
                "text": batch.text[i][:_MAX_TEXT],
                "keywords": batch.keywords[i][:_MAX_TEXT],
                "source": batch.source[i],
                "metadata": json.loads(batch.metadata[i]),
                "content_hash": batch.content_hash[i],
                "vector": batch.vectors[i].tolist(),
            }
            for i in range(len(batch))
        ]
        self._client.upsert(self.collection, rows)
        hashes = dict(zip(batch.document_id, batch.content_hash, strict=True))
        for document_id in document_ids:
            expr = (
                f"document_id == {_literal(document_id)} and content_hash != {_literal(hashes[document_id])}"
            )
            self._client.delete(self.collection, filter=expr)

    def delete_documents(self, document_ids: Sequence[str]) -> int:
        existing = self.document_hashes(document_ids)
        if existing:
            self._client.delete(self.collection, filter=_in("document_id", sorted(existing)))
        return len(existing)

    def document_hashes(self, document_ids: Sequence[str]) -> dict[str, str]:
        if not document_ids:
            return {}
        rows = self._client.query(
            self.collection,
            filter=f"position == 0 and {_in('document_id', list(document_ids))}",
            output_fields=["document_id", "content_hash"],
        )
        return {row["document_id"]: row["content_hash"] for row in rows}

    def _consistent(self, hits: list[Hit], hashes: list[str]) -> list[Hit]:
        """Drop chunks left from an interrupted replacement (hash differs from position 0's)."""
        current = self.document_hashes(sorted({hit.document_id for hit in hits}))
        return [hit for hit, h in zip(hits, hashes, strict=True) if current.get(hit.document_id) == h]

    def _search(self, data, field: str, metric: str, k: int, where: Sequence[Condition]) -> list[Hit]:
        result = self._client.search(
            self.collection,
            data=[data],
            anns_field=field,
            limit=k,
            filter=compile_expr(where),
            output_fields=_OUTPUT,
            search_params={"metric_type": metric},
        )
        hits: list[Hit] = []
        hashes: list[str] = []
        for rank, item in enumerate(result[0]):
            entity = item["entity"]
            # BM25 scores come back with the backend's sign convention; rank order is what counts
            score = float(item["distance"]) if metric == "COSINE" else 1.0 / (1 + rank)
            hits.append(
                Hit(
                    entity["chunk_id"],
                    entity["document_id"],
                    int(entity["position"]),
                    entity["text"],
                    entity["source"],
                    entity["metadata"] or {},
                    score,
                )
            )
            hashes.append(entity["content_hash"])
        return self._consistent(hits, hashes)

    def dense_search(self, vector: np.ndarray, k: int, where: Sequence[Condition]) -> list[Hit]:
        return self._search(np.asarray(vector, dtype=np.float32).tolist(), "vector", "COSINE", k, where)

    def keyword_search(self, terms: str, k: int, where: Sequence[Condition]) -> list[Hit]:
        if not terms.strip():
            return []
        return self._search(terms, "sparse", "BM25", k, where)

    def list_documents(self, limit: int, offset: int) -> list[DocumentInfo]:
        rows = self._client.query(
            self.collection,
            filter="position == 0",
            output_fields=["document_id", "source", "chunk_count", "content_hash", "metadata"],
            limit=limit,
            offset=offset,
        )
        return [
            DocumentInfo(
                r["document_id"], r["source"], r["chunk_count"], r["content_hash"], r["metadata"] or {}
            )
            for r in sorted(rows, key=lambda r: r["document_id"])
        ]

    def _count(self, expr: str) -> int:
        rows = self._client.query(self.collection, filter=expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def count_documents(self) -> int:
        return self._count("position == 0")

    def count_chunks(self) -> int:
        return self._count('chunk_id != ""')

    def maintain(self) -> list[str]:
        return []  # Milvus builds and merges its indexes itself

    def drop(self) -> None:
        self._client.drop_collection(self.collection)
        self.close()

    def close(self) -> None:
        self._client.close()
