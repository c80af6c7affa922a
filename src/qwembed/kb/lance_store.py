"""The embedded default store: one LanceDB table per collection, in the collection's directory.

Why LanceDB: appends of ~100k rows in about a second, an offline full-text index, readers in other
processes during writes, and commits that are atomic (a new manifest is written only after the
data files), so ``kill -9`` at any moment leaves the previous version or the next, never a part.
Its exact vector search gets slow past ~100k rows, so ``maintain`` builds an ANN index once the
table is big enough; that build takes seconds to minutes and runs in the background, never in a
request. Rows added after a build are still searched (exactly) until the next ``maintain``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from .errors import InvalidFilterError
from .filters import Condition, sql_string
from .store import ChunkBatch, DocumentInfo, Hit

log = logging.getLogger("qwembed.kb")

TABLE = "chunks"
ANN_THRESHOLD = 50_000  # rows: below, exact search is fast enough (and exact)
# The ANN index and how it is searched: chosen with ``bench/bench_kb.py store`` (see
# docs/knowledge-base.md, Benchmarks): recall@10 and p50 at 100k real and 1M × 384 vectors.
VECTOR_INDEX = "IVF_FLAT"
INDEX_TYPES = ("IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_RQ", "IVF_HNSW_FLAT", "IVF_HNSW_SQ", "IVF_HNSW_PQ")
# IVF partitions searched per query (more are searched when a filter leaves too few). With √n
# partitions a probe scans ~√n vectors, so a fixed number of probes gets slower as the table grows
# (1M real minilm vectors: 18 / 21 / 28 ms p50 at 16 / 32 / 64 probes); instead, each query scans
# about SCAN_BUDGET vectors: 52 probes at 100k (recall@10 ≈ 0.99), 16 at 1M (0.977 at 18 ms).
SCAN_BUDGET = 16_384
MIN_NPROBES, MAX_NPROBES = 8, 64
HNSW_NPROBES = 32  # IVF_HNSW_* partitions hold a graph each; a probe is not a scan
REFINE_FACTOR = 0  # > 0: fetch k × this many candidates and re-score them on the full vectors
EF = 0  # HNSW candidate list; 0 = LanceDB's default (1.5 × k)
REINDEX_FRACTION = 0.1  # rows added since the last index update before ``maintain`` refreshes it
_COLUMNS = ["chunk_id", "document_id", "position", "text", "source", "metadata"]


def _schema(dimension: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("document_id", pa.string(), nullable=False),
            pa.field("position", pa.int32(), nullable=False),
            pa.field("chunk_count", pa.int32(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("keywords", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("metadata", pa.json_(pa.utf8()), nullable=False),
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dimension), nullable=False),
        ]
    )


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(sql_string(v) for v in values)})"


def _literal(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return sql_string(value)
    return repr(value)


_SQL_OPS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def compile_where(conditions: Sequence[Condition]) -> str | None:
    """Lance SQL; metadata fields are read from the JSON column with typed getters."""
    parts: list[str] = []
    for c in conditions:
        sample = c.value[0] if isinstance(c.value, tuple) else c.value
        if c.is_column:
            expression = c.field
        else:
            getter = (
                "json_get_bool"
                if isinstance(sample, bool)
                else "json_get_string"
                if isinstance(sample, str)
                else "json_get_int"
                if isinstance(sample, int)
                else "json_get_float"
            )
            expression = f"{getter}(metadata, {sql_string(c.field)})"
        if c.op == "$in":
            assert isinstance(c.value, tuple)
            parts.append(f"{expression} IN ({', '.join(_literal(v) for v in c.value)})")
        else:
            assert not isinstance(c.value, tuple)
            parts.append(f"{expression} {_SQL_OPS[c.op]} {_literal(c.value)}")
    return " AND ".join(f"({p})" for p in parts) or None


def _run_filtered(query, conditions: Sequence[Condition]) -> list[dict]:
    """``query``'s rows. LanceDB's typed JSON getters convert a stored value to the filter value's
    type where they can (``"2020"`` ↔ ``2020``, ``1`` ↔ ``true``) and fail the whole query where
    they cannot (a number filter over a field some document holds as a word, an object or a
    list): that is the filter's doing, so it is an ``InvalidFilterError`` (400), not a 500."""
    try:
        return query.to_arrow().to_pylist()
    except RuntimeError as error:
        if not conditions or "Failed to convert to" not in str(error):
            raise
        fields = ", ".join(sorted({repr(c.field) for c in conditions if not c.is_column}))
        raise InvalidFilterError(
            f"the filter on {fields} compares with a type that some documents' values of the field "
            "cannot be converted to (e.g. a number filter over a field stored as a word, an object or "
            "a list in some document): filter a field that holds one type"
        ) from None


def default_partitions(index_type: str, rows: int) -> int:
    """IVF partitions: ~√n/4 for IVF_HNSW_* (an HNSW graph in each), ~√n for the scanned kinds."""
    root = rows**0.5
    return max(1, int(root / 4 if "HNSW" in index_type else root))


def default_nprobes(index_type: str, rows: int) -> int:
    """Probes that scan about ``SCAN_BUDGET`` vectors of an index with the default partitions."""
    if "HNSW" in index_type:
        return HNSW_NPROBES
    per_partition = rows / default_partitions(index_type, rows)
    return int(min(MAX_NPROBES, max(MIN_NPROBES, round(SCAN_BUDGET / max(per_partition, 1.0)))))


class LanceStore:
    def __init__(
        self,
        path: Path,
        dimension: int,
        *,
        ann_threshold: int = ANN_THRESHOLD,
        index_type: str = VECTOR_INDEX,
        nprobes: int | None = None,
        refine_factor: int = REFINE_FACTOR,
        ef: int = EF,
    ):
        import lancedb
        from lancedb.index import FTS

        if index_type not in INDEX_TYPES:
            raise ValueError(f"unknown vector index type {index_type!r}; one of {', '.join(INDEX_TYPES)}")
        self.path = path
        self.dimension = dimension
        self.ann_threshold = ann_threshold
        self.index_type = index_type
        # search knobs; they only matter once there is an ANN index (attributes: a bench sweeps them);
        # nprobes None: default_nprobes for the table's size
        self.nprobes = nprobes
        self.refine_factor = refine_factor
        self.ef = ef
        # interval 0: every read checks for a newer version, so a server sees a CLI's adds at once
        self._db = lancedb.connect(str(path), read_consistency_interval=timedelta(0))
        self._maintenance = threading.Lock()
        if TABLE in self._db.list_tables().tables:
            self._table = self._db.open_table(TABLE)
            stored = self._table.schema.field("vector").type.list_size
            if stored != dimension:
                raise ValueError(f"the store at {path} holds {stored}-dimensional vectors, not {dimension}")
        else:
            self._table = self._db.create_table(TABLE, schema=_schema(dimension), exist_ok=True)
        if not any(index.index_type == "FTS" for index in self._table.list_indices()):
            # whitespace-separated terms from keywords.segment; English words lower-cased and stemmed
            self._table.create_index("keywords", config=FTS(base_tokenizer="simple"))

    # ---- writes ---------------------------------------------------------------------------
    def _arrow(self, batch: ChunkBatch) -> pa.Table:
        vectors = np.ascontiguousarray(batch.vectors, dtype=np.float32).reshape(-1)
        columns = {
            "chunk_id": batch.chunk_id,
            "document_id": batch.document_id,
            "position": pa.array(batch.position, pa.int32()),
            "chunk_count": pa.array(batch.chunk_count, pa.int32()),
            "text": batch.text,
            "keywords": batch.keywords,
            "source": batch.source,
            "metadata": pa.array(batch.metadata, pa.json_(pa.utf8())),
            "content_hash": batch.content_hash,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors), self.dimension),
        }
        return pa.table(columns, schema=_schema(self.dimension))

    def replace_documents(self, document_ids: Sequence[str], batch: ChunkBatch) -> None:
        data = self._arrow(batch)
        existing = self.document_hashes(document_ids) if document_ids else {}
        if not existing:
            self._table.add(data)  # all new: a plain append is one commit
            return
        # One merge commit both writes the new chunks and drops the replaced documents' other
        # chunks; a delete followed by an add would let a crash between them lose a document.
        # Keyed on (chunk_id, content_hash): a new version matches no stored row, so every row of
        # the old one goes, copies included (a document stored twice by two writers before the
        # folder lock is whole again once it is replaced).
        merge = (
            self._table.merge_insert(["chunk_id", "content_hash"])
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(_in_list("document_id", sorted(existing)))
        )
        merge.execute(data)

    def delete_documents(self, document_ids: Sequence[str]) -> int:
        existing = self.document_hashes(document_ids)
        if existing:
            self._table.delete(_in_list("document_id", sorted(existing)))
        return len(existing)

    # ---- reads ----------------------------------------------------------------------------
    def document_hashes(self, document_ids: Sequence[str]) -> dict[str, str]:
        if not document_ids:
            return {}
        rows = (
            self._table.search()
            .where(f"position = 0 AND {_in_list('document_id', list(document_ids))}")
            .select(["document_id", "content_hash"])
            # every matching row, not len(ids): if a document was ever stored twice (two writers
            # before the folder lock), its extra rows must not crowd another id out of the answer
            .limit(None)
            .to_arrow()
            .to_pylist()
        )
        return {row["document_id"]: row["content_hash"] for row in rows}

    def _hits(self, rows: list[dict], score_key: str, to_score) -> list[Hit]:
        return [
            Hit(
                chunk_id=row["chunk_id"],
                document_id=row["document_id"],
                position=row["position"],
                text=row["text"],
                source=row["source"],
                metadata=json.loads(row["metadata"]) if row["metadata"] else {},
                score=to_score(row[score_key]),
            )
            for row in rows
        ]

    def dense_search(self, vector: np.ndarray, k: int, where: Sequence[Condition]) -> list[Hit]:
        query = (
            self._table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
            .distance_type("cosine")
            .select([*_COLUMNS, "_distance"])
            .limit(k)
            # with an ANN index: ``nprobes`` partitions; ignored by exact search
            .nprobes(self.nprobes or default_nprobes(self.index_type, self._table.count_rows()))
        )
        clause = compile_where(where)
        if clause:
            # a prefilter can leave fewer than k rows in those partitions: then search on (up to all)
            query = query.where(clause, prefilter=True).maximum_nprobes(0)
        if self.refine_factor:
            query = query.refine_factor(self.refine_factor)
        if self.ef:  # LanceDB requires ef ≥ the candidates asked of the graph
            query = query.ef(max(self.ef, k * max(self.refine_factor, 1)))
        return self._hits(_run_filtered(query, where), "_distance", lambda d: 1.0 - float(d))

    def keyword_search(self, terms: str, k: int, where: Sequence[Condition]) -> list[Hit]:
        if not terms.strip():
            return []
        query = (
            self._table.search(terms, query_type="fts", fts_columns="keywords")
            .select([*_COLUMNS, "_score"])
            .limit(k)
        )
        clause = compile_where(where)
        if clause:
            query = query.where(clause, prefilter=True)
        return self._hits(_run_filtered(query, where), "_score", float)

    def list_documents(self, limit: int, offset: int) -> list[DocumentInfo]:
        rows = (
            self._table.search()
            .where("position = 0")
            .select(["document_id", "source", "chunk_count", "content_hash", "metadata"])
            .offset(offset)
            .limit(limit)
            .to_arrow()
            .to_pylist()
        )
        return [
            DocumentInfo(
                r["document_id"], r["source"], r["chunk_count"], r["content_hash"], json.loads(r["metadata"])
            )
            for r in rows
        ]

    def count_documents(self) -> int:
        return self._table.count_rows("position = 0")

    def count_chunks(self) -> int:
        return self._table.count_rows()

    def chunk_layout(self) -> dict[str, tuple[set[int], list[int], set[str]]]:
        """document_id → (declared chunk counts, positions present, content hashes): integrity checks."""
        columns = ["document_id", "position", "chunk_count", "content_hash"]
        rows = self._table.search().select(columns).limit(None).to_arrow().to_pylist()
        layout: dict[str, tuple[set[int], list[int], set[str]]] = {}
        for row in rows:
            counts, positions, hashes = layout.setdefault(row["document_id"], (set(), [], set()))
            counts.add(row["chunk_count"])
            positions.append(row["position"])
            hashes.add(row["content_hash"])
        return layout

    # ---- upkeep ---------------------------------------------------------------------------
    def has_vector_index(self) -> bool:
        return any(index.columns == ["vector"] for index in self._table.list_indices())

    def build_vector_index(self, index_type: str | None = None, num_partitions: int | None = None) -> None:
        """(Re)build the ANN index over every row; ``index_type`` defaults to the store's."""
        from lancedb import index as lance_index

        index_type = index_type or self.index_type
        rows = self.count_chunks()
        partitions = num_partitions or default_partitions(index_type, rows)
        common = {"distance_type": "cosine", "num_partitions": partitions}
        config = {
            "IVF_FLAT": lance_index.IvfFlat,
            "IVF_SQ": lance_index.IvfSq,
            "IVF_PQ": lance_index.IvfPq,
            "IVF_RQ": lance_index.IvfRq,
            "IVF_HNSW_FLAT": lance_index.HnswFlat,
            "IVF_HNSW_SQ": lance_index.HnswSq,
            "IVF_HNSW_PQ": lance_index.HnswPq,
        }[index_type](**common)
        self._table.create_index("vector", config=config, replace=True)

    def vector_index_type(self) -> str | None:
        for index in self._table.list_indices():
            if index.columns == ["vector"]:
                return index.index_type
        return None

    def maintain(self) -> list[str]:
        done: list[str] = []
        if not self._maintenance.acquire(blocking=False):
            return done  # another thread is already at it
        try:
            rows = self.count_chunks()
            built = self.vector_index_type()
            if rows >= self.ann_threshold and built is None:
                self.build_vector_index()
                done.append(f"built the vector index over {rows} chunks")
            elif built is not None and built.lower() != self.index_type.replace("_", "").lower():
                # e.g. an IVF_HNSW_SQ index from an older qwembed: replaced by the configured kind
                self.build_vector_index()
                done.append(f"rebuilt the vector index ({built}) as {self.index_type} over {rows} chunks")
            unindexed = max(
                (
                    self._table.index_stats(index.name).num_unindexed_rows
                    for index in self._table.list_indices()
                ),
                default=0,
            )
            if unindexed and unindexed >= REINDEX_FRACTION * max(rows, 1):
                # folds new rows into the indexes and compacts small files; old versions are kept
                # a while (LanceDB's default) so concurrent readers are not pulled from under
                self._table.optimize()
                done.append(f"indexed {unindexed} new chunks")
        finally:
            self._maintenance.release()
        return done

    def drop(self) -> None:
        self._db.drop_table(TABLE)

    def close(self) -> None:
        pass
