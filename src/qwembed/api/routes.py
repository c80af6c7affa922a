"""The HTTP routes. Each one parses, calls the engine's :class:`ModelPool`, and shapes the answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..engine.inputs import EmbedOptions
from ..engine.pool import Kind, ModelPool, ModelRequiredError, UnknownModelError
from .auth import KeyChecker
from .checked_route import CheckedRoute
from .encoding import embeddings_body
from .errors import ERROR_RESPONSES, APIError, client_closed_response, from_engine_error
from .metrics import Metrics
from .schemas import (
    EmbeddingRequest,
    EmbeddingResponse,
    Health,
    ModelList,
    ModelObject,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    TEIRerankItem,
    TEIRerankList,
    TEIRerankRequest,
    Usage,
)
from .settings import ServerSettings

T = TypeVar("T")


class ClientGoneError(Exception):
    """The client closed the connection while its request waited; nobody reads the answer."""


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` but cancel it as soon as the client disconnects, freeing its queued inputs."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientGoneError
    return task.result()


def _normalise_input(raw: object) -> list[str] | list[list[int]]:
    if isinstance(raw, str):
        return [raw]
    if raw and isinstance(raw[0], int):  # one list of token ids
        return [raw]  # type: ignore[list-item]
    return raw  # type: ignore[return-value]


#: how a count of each request field's items reads in a message: "1 input", "5000 inputs"
_NOUNS = {"input": ("input", "inputs"), "documents": ("document", "documents"), "texts": ("text", "texts")}


def _count_of(count: int, param: str) -> str:
    singular, plural = _NOUNS.get(param, (param, param))
    return f"{count} {singular if count == 1 else plural}"


def build_router(
    pool: ModelPool, settings: ServerSettings, metrics: Metrics, state: dict, keys: KeyChecker
) -> APIRouter:
    # CheckedRoute: the key, then the content type and coding, then the body (checked_route.py)
    router = APIRouter(route_class=CheckedRoute)
    protected = [Depends(keys)]

    def resolve_model(name: str | None, kind: Kind) -> str:
        try:  # (UnknownModelError covers a request of a kind nothing served is: NoModelOfKindError)
            return pool.resolve(name, kind)
        except (UnknownModelError, ModelRequiredError) as error:
            raise from_engine_error(error) from None

    def check_ready() -> None:
        if not state["ready"]:
            raise APIError(503, "the server is not ready", "not_ready", headers={"Retry-After": "1"})

    def check_count(count: int, param: str) -> None:
        if count > settings.max_client_batch_size:
            raise APIError(
                413,
                f"{_count_of(count, param)} {'exceeds' if count == 1 else 'exceed'} "
                f"--max-client-batch-size {settings.max_client_batch_size}",
                "too_many_inputs",
                param,
            )

    async def answer(request: Request, work: Awaitable[T]) -> T | Response:
        """Run engine work for a request; a client that left gets nothing, engine errors their status."""
        try:
            return await _unless_disconnected(request, work)
        except ClientGoneError:
            return client_closed_response()
        except APIError:
            raise
        except Exception as error:
            raise from_engine_error(error) from error

    @router.post(
        "/v1/embeddings",
        response_model=EmbeddingResponse,
        responses=ERROR_RESPONSES,
        dependencies=protected,
        summary="Create embeddings (OpenAI-compatible)",
    )
    async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
        check_ready()
        model = resolve_model(body.model, "embedding")
        inputs = _normalise_input(body.input)
        if not inputs:
            raise APIError(400, "input must not be empty", "empty_input", "input")
        check_count(len(inputs), "input")  # empty strings were refused by the schema already
        truncate = settings.auto_truncate if body.truncate is None else body.truncate
        options = EmbedOptions(body.input_type, body.instruction, truncate)
        result = await answer(request, pool.embed(model, inputs, options, body.dimensions))
        if isinstance(result, Response):
            return result
        return Response(
            embeddings_body(result.vectors, model, result.total_tokens, body.encoding_format or "float"),
            media_type="application/json",
        )

    @router.post(
        "/v1/rerank",
        response_model=RerankResponse,
        responses=ERROR_RESPONSES,
        dependencies=protected,
        summary="Rerank documents for a query (Cohere / Jina / Infinity shape)",
    )
    async def rerank(body: RerankRequest, request: Request) -> Response:
        check_ready()
        model = resolve_model(body.model, "reranker")
        documents = [d if isinstance(d, str) else d.text for d in body.documents]
        check_count(len(documents), "documents")
        ranking = await answer(
            request, pool.rerank(model, body.query, documents, instruction=body.instruction, top_n=body.top_n)
        )
        if isinstance(ranking, Response):
            return ranking
        results = [
            RerankResult(
                index=r.index,
                relevance_score=r.score,
                document=RerankDocument(text=documents[r.index]) if body.return_documents else None,
            )
            for r in ranking.results
        ]
        usage = Usage(prompt_tokens=ranking.total_tokens, total_tokens=ranking.total_tokens)
        response = RerankResponse(model=model, results=results, usage=usage)
        return Response(response.model_dump_json(exclude_none=True), media_type="application/json")

    @router.post(
        "/rerank",
        response_model=list[TEIRerankItem],
        responses=ERROR_RESPONSES,
        dependencies=protected,
        summary="Rerank in text-embeddings-inference's shape",
    )
    async def rerank_tei(body: TEIRerankRequest, request: Request) -> Response:
        check_ready()
        model = resolve_model(body.model, "reranker")
        check_count(len(body.texts), "texts")
        ranking = await answer(request, pool.rerank(model, body.query, body.texts))
        if isinstance(ranking, Response):
            return ranking
        scores = np.array([r.score for r in ranking.results], dtype=np.float32)
        if body.raw_scores:
            scores = pool.reranker(model).raw_scores(scores)
        items = [
            TEIRerankItem(
                index=r.index, score=float(score), text=body.texts[r.index] if body.return_text else None
            )
            for r, score in zip(ranking.results, scores, strict=True)
        ]
        return Response(
            TEIRerankList(items).model_dump_json(exclude_none=True), media_type="application/json"
        )

    def model_objects() -> list[ModelObject]:
        return [
            ModelObject(id=card.name, kind=card.kind, dimension=card.dimension, max_tokens=card.max_tokens)
            for card in pool.cards()
        ]

    @router.get("/v1/models", response_model=ModelList, dependencies=protected, summary="Served models")
    async def list_models() -> ModelList:
        return ModelList(data=model_objects())

    @router.get(
        "/v1/models/{model_id:path}",  # served names may contain '/' (org/name)
        response_model=ModelObject,
        responses={401: ERROR_RESPONSES[401], 404: ERROR_RESPONSES[404]},
        dependencies=protected,
        summary="One served model (OpenAI's models.retrieve)",
    )
    async def retrieve_model(model_id: str) -> ModelObject:
        found = next((model for model in model_objects() if model.id == model_id), None)
        if found is None:
            raise from_engine_error(UnknownModelError(model_id, pool.names))
        return found

    # Probes: GET, and HEAD for load balancers that probe with it (FastAPI, unlike Starlette, does
    # not answer HEAD for a GET route). HEAD is left out of the spec: it is GET without the body.
    @router.get("/health", response_model=Health, summary="Liveness: the process answers")
    async def health() -> Health:
        return Health(status="ok")

    @router.get(
        "/ready",
        response_model=Health,
        responses={503: {"model": Health}},
        summary="Readiness: models loaded and warm, not shutting down",
    )
    async def ready() -> Response:
        status, code = ("ready", 200) if state["ready"] else ("not_ready", 503)
        return Response(
            Health(status=status).model_dump_json(), status_code=code, media_type="application/json"
        )

    router.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)
    router.add_api_route("/ready", ready, methods=["HEAD"], include_in_schema=False)

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        dependencies=protected if settings.protect_metrics else [],
    )
    async def prometheus() -> Response:
        for name in pool.names:
            metrics.queue_depth.labels(name).set(pool.queue_depth(name))
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return router
