"""Reranking in Cohere's shape: ``POST /v1/rerank`` (Cohere v1, Jina, Infinity, vLLM) and
``POST /v2/rerank`` (Cohere v2). :func:`rank_cohere` also answers TEI's ``/rerank`` when its body
carries ``documents`` (tei_routes.py). What a client asks that qwembed cannot honour is a 400 naming
the field, never a ranking made otherwise than asked."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..engine.pool import ModelPool, Ranking
from ..engine.rerank import NO_CAPS, TokenCaps
from .auth import KeyChecker
from .checked_route import CheckedRoute
from .errors import ERROR_RESPONSES, APIError
from .route_helpers import RouteHelpers
from .schemas import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankV2BilledUnits,
    RerankV2Meta,
    RerankV2Request,
    RerankV2Response,
    RerankV2Tokens,
    Usage,
)
from .settings import ServerSettings


def build_rerank_router(
    pool: ModelPool, settings: ServerSettings, state: dict, keys: KeyChecker
) -> APIRouter:
    # CheckedRoute: the key, then the content type and coding, then the body (checked_route.py)
    router = APIRouter(route_class=CheckedRoute)
    helpers = RouteHelpers(pool, settings, state, keys)
    protected = helpers.protected

    @router.post(
        "/v1/rerank",
        response_model=RerankResponse,
        responses=ERROR_RESPONSES,
        dependencies=protected,
        summary="Rerank documents for a query (Cohere v1 / Jina / Infinity / vLLM shape)",
    )
    async def rerank(body: RerankRequest, request: Request) -> Response:
        ranked = await rank_cohere(helpers, body, request)
        return ranked if isinstance(ranked, Response) else rerank_answer(ranked, body)

    @router.post(
        "/v2/rerank",
        response_model=RerankV2Response,
        responses=ERROR_RESPONSES,
        dependencies=protected,
        summary="Rerank documents for a query (Cohere v2: cohere.ClientV2 and the integrations on it)",
    )
    async def rerank_v2(body: RerankV2Request, request: Request) -> Response:
        ranked = await rank_cohere(helpers, body, request)
        return ranked if isinstance(ranked, Response) else rerank_v2_answer(ranked, body)

    return router


@dataclass
class Ranked:
    """A rerank request's answer before it is shaped: the model, the documents' texts and the
    ranking (best first), each result's score as the request asked for it (a probability, or a
    logit)."""

    model: str
    documents: list[str]
    ranking: Ranking


def refuse_unsupported(body: RerankRequest) -> None:
    """The Cohere / vLLM fields that qwembed cannot honour as asked: a 400 naming the field, never
    an answer that silently ranks otherwise than the client asked."""
    if body.rank_fields is not None and body.rank_fields != ["text"]:
        raise APIError(
            400,
            'rank_fields other than ["text"] are not supported: qwembed ranks each document\'s "text"; '
            "put the fields to rank on into the text (Cohere suggests YAML) and leave rank_fields out",
            "unsupported_parameter",
            "rank_fields",
        )
    if body.max_chunks_per_doc not in (None, 1):
        raise APIError(
            400,
            f"max_chunks_per_doc {body.max_chunks_per_doc} is not supported: qwembed scores one chunk per "
            "document (an over-long pair is cut to the model's limit); send 1 or leave it out, and split "
            "long documents yourself",
            "unsupported_parameter",
            "max_chunks_per_doc",
        )
    if body.truncation_side == "left":
        raise APIError(
            400,
            "truncation_side left is not supported: an over-long pair loses tokens at the end of the longer "
            "of query and document; leave truncation_side out or send right",
            "unsupported_parameter",
            "truncation_side",
        )
    if body.raw_scores and body.use_activation:
        raise APIError(
            400,
            "raw_scores true (Infinity's: logits) and use_activation true (vLLM's: probabilities) ask for "
            "opposite scores; send one of them",
            "invalid_request",
            "use_activation",
        )


def token_caps(body: RerankRequest) -> TokenCaps:
    """The body's token caps for the engine, which cuts to them (Cohere's per text, vLLM's per pair;
    the schema refused 0 and values below -1)."""
    pair = body.truncate_prompt_tokens
    return TokenCaps(
        query=body.max_tokens_per_query,
        document=body.max_tokens_per_doc,
        pair=None if pair == -1 else pair,  # (vLLM's -1: the model's limit, the cut made anyway)
    )


async def rank_documents(
    helpers: RouteHelpers,
    request: Request,
    model: str,
    query: str,
    documents: list[str],
    param: str,
    *,
    instruction: str | None = None,
    top_n: int | None = None,
    raw_scores: bool = False,
    truncate: bool = True,
    caps: TokenCaps = NO_CAPS,
) -> Ranked | Response:
    """The engine's ranking of ``documents`` (the request's field ``param``) for a resolved reranker;
    a Response where the client left or the work failed as a Response."""
    helpers.check_count(len(documents), param)
    pool = helpers.pool
    work = pool.rerank(
        model,
        query,
        documents,
        instruction=instruction,
        top_n=top_n,
        truncate=truncate,
        caps=caps,
        raw=raw_scores,
    )
    # (the engine calls the pair cap max_tokens, after the library's argument)
    fields = {"documents": param, "max_tokens": "truncate_prompt_tokens"}
    ranking = await helpers.answer(request, work, fields=fields)
    if isinstance(ranking, Response):
        return ranking
    return Ranked(model, documents, ranking)


async def rank_cohere(helpers: RouteHelpers, body: RerankRequest, request: Request) -> Ranked | Response:
    """A Cohere / Jina / Infinity / vLLM body ranked: its fields checked, then readiness, the model
    and the documents, in the documented order."""
    refuse_unsupported(body)
    caps = token_caps(body)
    helpers.check_ready()
    model = helpers.resolve_model(body.model, "reranker")
    documents = [d if isinstance(d, str) else d.text for d in body.documents]
    return await rank_documents(
        helpers,
        request,
        model,
        body.query,
        documents,
        "documents",
        instruction=body.instruction,
        top_n=body.top_n,
        raw_scores=bool(body.raw_scores) or body.use_activation is False,
        caps=caps,
    )


def _results(ranked: Ranked, return_documents: bool | None) -> list[RerankResult]:
    return [
        RerankResult(
            index=result.index,
            relevance_score=result.score,
            document=RerankDocument(text=ranked.documents[result.index]) if return_documents else None,
        )
        for result in ranked.ranking.results
    ]


def _answer_id() -> str:
    return f"rerank-{uuid.uuid4().hex}"


def rerank_answer(ranked: Ranked, body: RerankRequest) -> Response:
    """The Cohere v1 / Jina / vLLM answer: ``{object, id, model, results, usage}``."""
    tokens = ranked.ranking.total_tokens
    response = RerankResponse(
        id=_answer_id(),
        model=ranked.model,
        results=_results(ranked, body.return_documents),
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )
    return Response(response.model_dump_json(exclude_none=True), media_type="application/json")


def rerank_v2_answer(ranked: Ranked, body: RerankRequest) -> Response:
    """Cohere's v2 answer: ``{id, results, meta}``."""
    meta = RerankV2Meta(
        billed_units=RerankV2BilledUnits(search_units=math.ceil(len(ranked.documents) / 100)),
        tokens=RerankV2Tokens(input_tokens=ranked.ranking.total_tokens),
    )
    response = RerankV2Response(id=_answer_id(), results=_results(ranked, body.return_documents), meta=meta)
    return Response(response.model_dump_json(exclude_none=True), media_type="application/json")
