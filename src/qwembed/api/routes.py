"""The HTTP routes: OpenAI's embeddings and models, probes and metrics (reranking is in
rerank_routes.py, TEI's routes in tei_routes.py). Each one parses, calls the engine's
:class:`ModelPool`, and shapes the answer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..engine.inputs import EmbedOptions
from ..engine.pool import ModelPool, UnknownModelError
from .auth import KeyChecker
from .checked_route import CheckedRoute
from .encoding import embeddings_body
from .errors import ERROR_RESPONSES, APIError, from_engine_error
from .metrics import Metrics
from .route_helpers import RouteHelpers, normalise_input
from .schemas import (
    EmbeddingRequest,
    EmbeddingResponse,
    Health,
    ModelList,
    ModelObject,
)
from .settings import ServerSettings


def build_router(
    pool: ModelPool, settings: ServerSettings, metrics: Metrics, state: dict, keys: KeyChecker
) -> APIRouter:
    # CheckedRoute: the key, then the content type and coding, then the body (checked_route.py)
    router = APIRouter(route_class=CheckedRoute)
    helpers = RouteHelpers(pool, settings, state, keys)
    protected = helpers.protected

    @router.post(
        "/v1/embeddings",
        response_model=EmbeddingResponse,
        responses=ERROR_RESPONSES,
        dependencies=protected,
        summary="Create embeddings (OpenAI-compatible)",
    )
    async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
        helpers.check_ready()
        model = helpers.resolve_model(body.model, "embedding")
        inputs = normalise_input(body.input)
        if not inputs:
            raise APIError(400, "input must not be empty", "empty_input", "input")
        helpers.check_count(len(inputs), "input")  # empty strings were refused by the schema already
        helpers.check_token_ids(inputs, "input")
        normalize = body.normalize is not False  # (null: true)
        truncate = settings.auto_truncate if body.truncate is None else body.truncate
        cap = body.truncate_prompt_tokens
        if cap == -1:  # (vLLM's: cut to the model's limit)
            truncate, cap = True, None
        options = EmbedOptions(
            body.input_type, body.instruction, truncate, cap, body.truncation_side or "right"
        )
        work = pool.embed(model, inputs, options, body.dimensions, normalize)
        # (the engine calls the cap max_tokens, after the library's argument)
        result = await helpers.answer(request, work, fields={"max_tokens": "truncate_prompt_tokens"})
        if isinstance(result, Response):
            return result
        return Response(
            embeddings_body(result.vectors, model, result.total_tokens, body.encoding_format or "float"),
            media_type="application/json",
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
