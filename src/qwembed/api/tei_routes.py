"""text-embeddings-inference's routes, so that a TEI client switches by changing only its URL:
``POST /embed`` (also ``POST /``, where TEI serves an embedding model's ``/embed``), ``POST /rerank``
and ``GET /info``. Field names and defaults are TEI's (router/src/http/types.rs); what qwembed cannot
do as TEI does (left truncation of a rerank pair, named prompts other than ``query`` and
``document``) is a 400 naming the field, never silently ignored.
``/rerank`` also takes the body vLLM's and Infinity's ``/rerank`` take (``documents``), answered as
``/v1/rerank`` answers it.

Errors keep qwembed's shape (``{"error": {"message", "type", "param", "code"}}``), as on every other
route: TEI clients read the status and the message (docs/api.md, "TEI routes")."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import __version__
from ..backends import InputType
from ..engine.inputs import EmbedOptions
from ..engine.pool import ModelPool, UnknownModelError
from ..engine.unicode import is_unicode, lone_surrogate_message
from .auth import KeyChecker
from .checked_route import CheckedRoute
from .encoding import vectors_body
from .errors import ERROR_RESPONSES, APIError, from_engine_error
from .rerank_routes import rank_cohere, rank_documents, rerank_answer
from .route_helpers import RouteHelpers
from .schemas import RerankRequest, RerankResponse
from .settings import ServerSettings
from .tei_schemas import (
    TEIClassifierModel,
    TEIEmbeddingModel,
    TEIEmbeddingType,
    TEIEmbedRequest,
    TEIEmbedResponse,
    TEIInfo,
    TEIRerankBody,
    TEIRerankerType,
    TEIRerankItem,
    TEIRerankList,
    TEIRerankRequest,
)

#: TEI's ``prompt_name`` → qwembed's ``input_type``. TEI looks the name up in the model's
#: sentence-transformers ``prompts``; Qwen3-Embedding's are exactly these two (``query``: the
#: default retrieval instruction, ``document``: none), which ``input_type`` applies.
PROMPT_NAMES: dict[str, InputType] = {"query": "query", "document": "document"}

_INVALID_INPUTS = (
    "inputs must be a string, a list of strings, a list of token ids (integers ≥ 0) "
    "or a list of non-empty token-id lists"
)


def _is_token_ids(item: object) -> bool:
    # (JSON true is no token id, nor is 1.0)
    return isinstance(item, list) and all(type(t) is int and t >= 0 for t in item)


def parse_inputs(raw: object) -> list[str] | list[list[int]]:
    """TEI's ``inputs`` as a list of texts or of token-id lists, each failure a 400 naming ``inputs``."""
    empty = APIError(
        400, "inputs must not be empty (no empty list, no empty string)", "empty_input", "inputs"
    )
    if isinstance(raw, str):
        items: list = [raw]
    elif isinstance(raw, list) and raw and _is_token_ids(raw):
        return [raw]  # one list of token ids
    elif isinstance(raw, list):
        items = raw
    else:
        raise APIError(400, _INVALID_INPUTS, "invalid_input", "inputs")
    if not items:
        raise empty
    if all(isinstance(item, str) for item in items):
        for index, text in enumerate(items):
            if not text:
                if isinstance(raw, str):
                    raise empty
                message = f"inputs[{index}] is an empty string (send a space if you mean one)"
                raise APIError(400, message, "empty_input", "inputs")
            if not is_unicode(text):
                where = "inputs" if isinstance(raw, str) else f"inputs[{index}]"
                raise APIError(400, lone_surrogate_message(where), "invalid_text", "inputs")
        return items
    if all(_is_token_ids(item) for item in items):
        if not all(items):
            raise empty
        return items
    raise APIError(400, _INVALID_INPUTS, "invalid_input", "inputs")


def _is_left(direction: str | None) -> bool:
    return direction in ("Left", "left")


def rerank_truncation(body: TEIRerankRequest) -> bool:
    """TEI's ``truncate`` on /rerank: ``true`` or ``null`` fits an over-long pair to the model's
    limit (the longer of query and text loses tokens, the template never); ``false`` makes it a 400
    ``input_too_long`` naming the text. ``truncation_direction: Left`` is a 400 whether or not
    anything would be cut: TEI cuts the pair's tokens from the left, the query and the reranker's
    template first, which qwembed will not do."""
    if _is_left(body.truncation_direction):
        raise APIError(
            400,
            "truncation_direction Left is not supported on /rerank: an over-long pair is cut at the "
            "end of the longer of query and text (Right), never the query's start or the template; "
            "leave truncation_direction out or send Right",
            "unsupported_parameter",
            "truncation_direction",
        )
    return body.truncate is not False


def embed_options(body: TEIEmbedRequest, token_ids: bool, auto_truncate: bool) -> EmbedOptions:
    """TEI's options as the engine's, or a 400 naming the one qwembed cannot honour (``normalize``
    is the engine's to check: ``postprocess.check_normalize``). ``truncation_direction: Left`` cuts
    a text's beginning, keeping the model's prompt and special tokens."""
    input_type: InputType | None = None
    if body.prompt_name is not None:
        input_type = PROMPT_NAMES.get(body.prompt_name)
        if input_type is None:
            raise APIError(
                400,
                f"prompt_name {body.prompt_name!r} is not known: qwembed takes 'query' (the model's query "
                "prompt; Qwen3: its default retrieval instruction) or 'document'; for another task use "
                "POST /v1/embeddings with input_type 'query' and an instruction",
                "invalid_request",
                "prompt_name",
            )
        if token_ids:
            raise APIError(
                400,
                "prompt_name applies to text inputs; token-id inputs are embedded as given (the model's "
                "end token added) — prepend the prompt's tokens yourself",
                "invalid_request",
                "prompt_name",
            )
    truncate = auto_truncate if body.truncate is None else body.truncate
    side = "left" if _is_left(body.truncation_direction) else "right"
    return EmbedOptions(input_type, None, truncate, truncation_side=side)


def _dtype(compute: str | None) -> str | None:
    """``"bfloat16 matmuls, float32 elsewhere on cpu"`` → ``"bfloat16"`` (Encoder.compute names the
    matrix products' dtype first)."""
    return compute.split(" ", 1)[0] if compute else None


def build_tei_router(pool: ModelPool, settings: ServerSettings, state: dict, keys: KeyChecker) -> APIRouter:
    # CheckedRoute: the key, then the content type and coding, then the body (checked_route.py)
    router = APIRouter(route_class=CheckedRoute)
    helpers = RouteHelpers(pool, settings, state, keys, too_many_status=413)  # as TEI answers
    protected = helpers.protected

    async def embed(body: TEIEmbedRequest, request: Request) -> Response:
        inputs = parse_inputs(body.inputs)
        options = embed_options(body, isinstance(inputs[0], list), settings.auto_truncate)
        helpers.check_ready()
        model = helpers.resolve_model(body.model, "embedding")
        normalize = body.normalize is not False  # (null: true)
        helpers.check_count(len(inputs), "inputs")
        helpers.check_token_ids(inputs, "inputs")
        work = pool.embed(model, inputs, options, body.dimensions, normalize)
        result = await helpers.answer(request, work, fields={"input": "inputs"})
        if isinstance(result, Response):
            return result
        return Response(vectors_body(result.vectors), media_type="application/json")

    spec = {
        "response_model": TEIEmbedResponse,
        "responses": ERROR_RESPONSES,
        "dependencies": protected,
        "methods": ["POST"],
    }
    router.add_api_route("/embed", embed, summary="Embeddings in text-embeddings-inference's shape", **spec)
    # TEI serves an embedding model's /embed at / too, where InferenceClient(url).feature_extraction
    # and LangChain's HuggingFaceEndpointEmbeddings post; left out of the spec, as TEI's spec does
    router.add_api_route("/", embed, include_in_schema=False, **spec)

    @router.post(
        "/rerank",
        response_model=list[TEIRerankItem] | RerankResponse,
        responses=ERROR_RESPONSES,
        dependencies=protected,
        summary="Rerank: text-embeddings-inference's body (texts), or Cohere / Jina / vLLM's (documents)",
        description="A body with `texts` is TEI's and is answered as TEI's bare list of `{index, score, "
        "text?}`; a body with `documents` is answered as `POST /v1/rerank` answers it (vLLM's and "
        "Infinity's /rerank). Both, or neither, is a 400.",
    )
    async def rerank_tei(body: TEIRerankBody, request: Request) -> Response:
        if isinstance(body, RerankRequest):
            ranked = await rank_cohere(helpers, body, request)
            return ranked if isinstance(ranked, Response) else rerank_answer(ranked, body)
        truncate = rerank_truncation(body)
        helpers.check_ready()
        model = helpers.resolve_model(body.model, "reranker")
        ranked = await rank_documents(
            helpers,
            request,
            model,
            body.query,
            body.texts,
            "texts",
            top_n=body.top_n,
            raw_scores=bool(body.raw_scores),
            truncate=truncate,
        )
        if isinstance(ranked, Response):
            return ranked
        items = [
            TEIRerankItem(
                index=r.index, score=r.score, text=body.texts[r.index] if body.return_text else None
            )
            for r in ranked.ranking.results
        ]
        return Response(
            TEIRerankList(items).model_dump_json(exclude_none=True), media_type="application/json"
        )

    def info_model(name: str | None) -> str:
        """The model ``?model=`` names (of either kind), else the one /embed would use, else the
        one /rerank would use on a server without embedding models."""
        if name:
            if name not in pool.names:
                raise from_engine_error(UnknownModelError(name, pool.names))
            return name
        return helpers.resolve_model(None, "embedding" if pool.names_of("embedding") else "reranker")

    @router.get(
        "/info",
        response_model=TEIInfo,
        responses={status: ERROR_RESPONSES[status] for status in (400, 401, 404)},
        dependencies=protected,
        summary="A served model and the server's limits, in text-embeddings-inference's shape",
    )
    async def info(model: str | None = None) -> TEIInfo:
        name = info_model(model)
        card = pool.card(name)
        limits = pool.batch_limits(name)
        model_type = (
            TEIEmbeddingType(embedding=TEIEmbeddingModel())
            if card.kind == "embedding"
            else TEIRerankerType(reranker=TEIClassifierModel())
        )
        return TEIInfo(
            model_id=card.source,
            model_dtype=_dtype(pool.compute(name)),
            served_model_name=card.name,
            model_type=model_type,
            max_input_length=card.max_tokens,
            max_batch_tokens=limits.max_batch_tokens,
            max_batch_requests=limits.max_batch_size,
            max_client_batch_size=settings.max_client_batch_size,
            auto_truncate=settings.auto_truncate,
            version=__version__,
        )

    return router
