"""``/v1/kb`` routes: the knowledge base over HTTP, same keys and error shape as the rest of the API.

``build_kb_router(manager, key_dependency)`` returns an ``APIRouter``; ``create_app`` mounts it when
the server has a KB directory. Every handler runs the (blocking) manager call in a thread, and the
documents route answers 200 only after the store committed: a 200 means durable.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ..kb.documents import Document, shown
from ..kb.errors import KBError
from ..kb.ingest import Failure, confine, read_paths
from ..kb.manager import MAX_K, MAX_LISTING, MAX_PAGE, KnowledgeBaseManager
from ..kb.search import hit_json
from ..kb.settings import MIN_CHUNK_TOKENS
from .checked_route import CheckedRoute
from .errors import ERROR_RESPONSES, APIError, from_engine_error

MAX_DOCUMENTS_PER_REQUEST = 2048


class _Strict(BaseModel):
    # strict: JSON "12" is not a number of tokens, `true` is not 1
    model_config = ConfigDict(extra="forbid", strict=True)


class ChunkingBody(_Strict):
    chunk_tokens: int = Field(ge=MIN_CHUNK_TOKENS)
    overlap_tokens: int = Field(default=0, ge=0)


class CreateBody(_Strict):
    model: str
    dimensions: int | None = Field(default=None, ge=1)
    chunking: ChunkingBody | None = None
    instruction: str | None = None


class PrecomputedChunk(_Strict):
    text: str
    embedding: list[float]


class DocumentBody(_Strict):
    # an integer id is its decimal string, as in JSONL records; empty, over-long or not-Unicode
    # ids are that document's failure (Document.validate), like an empty text
    id: str | int
    text: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    source: str = ""
    chunks: list[PrecomputedChunk] | None = None


class AddBody(_Strict):
    documents: list[DocumentBody] = Field(default_factory=list, max_length=MAX_DOCUMENTS_PER_REQUEST)
    # server-side files, read only inside the manager's file roots
    paths: list[str] = Field(default_factory=list, max_length=MAX_DOCUMENTS_PER_REQUEST)


class SearchBody(_Strict):
    query: str = Field(min_length=1)
    k: int = Field(default=5, ge=1, le=MAX_K)
    mode: Literal["dense", "keyword", "hybrid"] = "hybrid"
    filter: dict[str, Any] | None = None
    rerank: str | None = None
    #: the reranker's task (default: the collection's query instruction, else the reranker's own;
    #: Collection.rerank_task); only with ``rerank``
    rerank_instruction: str | None = None
    #: only each document's best chunk (false: chunks, so one document can take several places)
    per_document: bool = True
    #: how hybrid mode merges the dense and keyword lists (kb/search.py)
    fusion: Literal["dbsf", "relative_score", "rrf"] = "dbsf"


def _api_error(error: Exception) -> APIError:
    if isinstance(error, KBError):
        return APIError(error.status, str(error), error.code, error.param)
    # engine errors (input too long …) keep their codes; anything else is a logged, bland 500
    return from_engine_error(error)


async def _call(func, *args, **kwargs):
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except APIError:
        raise
    except Exception as error:
        raise _api_error(error) from error


def build_kb_router(manager: KnowledgeBaseManager, key_dependency) -> APIRouter:
    router = APIRouter(
        route_class=CheckedRoute,  # the key before the body, and the body's errors as documented
        prefix="/v1/kb",
        tags=["knowledge base"],
        dependencies=[Depends(key_dependency)],
        responses=ERROR_RESPONSES,
    )

    @router.put("/{name}")
    async def create_collection(name: str, body: CreateBody) -> dict[str, Any]:
        settings, created = await _call(
            manager.create,
            name,
            body.model,
            dimensions=body.dimensions,
            chunking=body.chunking.model_dump() if body.chunking else None,
            query_instruction=body.instruction,
        )
        return {"name": name, "created": created, "settings": settings.public()}

    @router.get("")
    async def list_collections() -> dict[str, Any]:
        stats = await _call(manager.all_stats)
        return {"data": [s.to_json() for s in stats]}

    @router.get("/{name}")
    async def collection_stats(name: str) -> dict[str, Any]:
        stats = await _call(lambda: manager.get(name).stats())
        return stats.to_json()

    @router.post("/{name}/documents")
    async def add_documents(name: str, body: AddBody) -> dict[str, Any]:
        documents = [
            Document(
                id=str(d.id),
                text=d.text,
                metadata=d.metadata,
                source=d.source,
                chunks=[(c.text, c.embedding) for c in d.chunks] if d.chunks is not None else None,
            )
            for d in body.documents
        ]
        failures: list[Failure] = []
        if body.paths:
            try:
                files = [confine(path, manager.file_roots) for path in body.paths]  # 403 before any read
            except KBError as error:
                raise _api_error(error) from error
            for item in await asyncio.to_thread(lambda: list(read_paths(files))):
                (failures if isinstance(item, Failure) else documents).append(item)
        if not documents and not failures:
            raise APIError(400, "give documents or paths", "missing_field", "documents")
        report = await _call(manager.add, name, documents)
        result = report.to_json()
        result["failed"] += [{"id": f.item, "message": f.reason} for f in failures]
        # a file name that is not UTF-8 reaches us with lone surrogates (surrogateescape), which
        # no JSON answer can carry: escape them rather than fail the whole answer
        result["failed"] = [{"id": shown(f["id"]), "message": shown(f["message"])} for f in result["failed"]]
        return result

    @router.post("/{name}/search")
    async def search(name: str, body: SearchBody) -> dict[str, Any]:
        hits = await _call(
            manager.search,
            name,
            body.query,
            k=body.k,
            mode=body.mode,
            filter=body.filter,
            rerank=body.rerank,
            rerank_instruction=body.rerank_instruction,
            per_document=body.per_document,
            fusion=body.fusion,
        )
        answer: dict[str, Any] = {"results": [hit_json(hit) for hit in hits]}
        if hits.warnings:  # (a query cut to the model's limit says so)
            answer["warnings"] = hits.warnings
        return answer

    @router.delete("/{name}")
    async def drop_collection(name: str) -> dict[str, Any]:
        await _call(manager.drop, name)
        return {"name": name, "dropped": True}

    @router.delete("/{name}/documents/{document_id:path}")
    async def delete_document(name: str, document_id: str) -> dict[str, Any]:
        await _call(lambda: manager.get(name).delete(document_id))
        return {"id": document_id, "deleted": True}

    @router.get("/{name}/documents")
    async def list_documents(name: str, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        if not 1 <= limit <= MAX_PAGE:
            raise APIError(400, f"limit must be 1..{MAX_PAGE}", "invalid_request", "limit")
        if not 0 <= offset <= MAX_LISTING:  # (a larger offset overflows LanceDB's)
            raise APIError(400, f"offset must be 0..{MAX_LISTING}", "invalid_request", "offset")
        infos = await _call(lambda: manager.get(name).documents(limit, offset))
        return {
            "data": [
                {"id": i.document_id, "source": i.source, "chunks": i.chunks, "metadata": i.metadata}
                for i in infos
            ]
        }

    return router
