"""Every failure leaves as OpenAI's ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging
import math
import re
from http import HTTPStatus

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from ..backends import InputTooLongError, InvalidTokenIdsError, PairTooLongError, PromptTooLongError
from ..engine import InvalidDimensionsError, NormalizeUnsupportedError, OverloadedError, WorkerStoppedError
from ..engine.inputs import InstructionWithTokenIdsError, InvalidTextError
from ..engine.instructions import EmptyInstructionError
from ..engine.pool import ModelRequiredError, UnknownModelError
from ..engine.unicode import lone_surrogate_message
from .schemas import ErrorResponse

log = logging.getLogger("qwembed.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    507: "server_error",
}


#: the error statuses every API route may answer, for the OpenAPI spec
ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Bad input: invalid JSON or schema, input too long, bad dimensions or token ids, more inputs "
        "than --max-client-batch-size",
        401: "Missing or invalid API key",
        403: "A file path outside the folders the server may read (--kb-file-root)",
        404: "Unknown model, collection or document",
        408: "The request body did not arrive within --body-timeout",
        409: "Conflict with the stored state (e.g. a collection's settings)",
        413: "Body larger than --max-body-bytes, or (TEI's routes) more inputs than --max-client-batch-size",
        415: "Content type other than application/json, or a compressed body (Content-Encoding)",
        429: "Queue full: retry after the Retry-After header",
        500: "Inference failed",
        503: "Not ready or shutting down",
        507: "The knowledge base's disk is full: the write was not stored",
    }.items()
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}


def error_response(
    status: int, message: str, code: str, param: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def client_closed_response() -> Response:
    """nginx's 499 for a client that closed its connection before the answer (mid-upload, or while
    its request waited). Nobody reads it: the status and code are what the metrics count."""
    return error_response(
        499, "the client closed the connection before the answer was ready", "client_closed_request"
    )


def from_engine_error(error: Exception) -> APIError:
    """Translate the engine's exceptions; anything unknown is a 500 that names no internals."""
    if isinstance(error, PromptTooLongError):  # (the text was never the problem)
        blamed = "max_tokens" if error.capped else "instruction" if error.instruction else "model"
        return APIError(400, str(error), "input_too_long", blamed)
    if isinstance(error, PairTooLongError):  # (a route whose field is not "documents" renames it)
        return APIError(400, str(error), "input_too_long", "documents")
    if isinstance(error, InputTooLongError):
        return APIError(400, str(error), "input_too_long", "input")
    if isinstance(error, InvalidDimensionsError):
        return APIError(400, str(error), "invalid_dimensions", "dimensions")
    if isinstance(error, NormalizeUnsupportedError):
        return APIError(400, str(error), "unsupported_parameter", "normalize")
    if isinstance(error, InvalidTokenIdsError):
        return APIError(400, str(error), "invalid_token_ids", "input")
    if isinstance(error, InvalidTextError):
        return APIError(400, str(error), "invalid_text", "input")
    if isinstance(error, InstructionWithTokenIdsError):
        return APIError(400, str(error), "invalid_request", error.field)
    if isinstance(error, EmptyInstructionError):
        return APIError(400, str(error), "invalid_request", "instruction")
    if isinstance(error, ModelRequiredError):
        return APIError(400, str(error), "model_required", "model")
    if isinstance(error, UnknownModelError):
        return APIError(404, str(error), "model_not_found", "model")
    if isinstance(error, OverloadedError):
        retry_after = str(max(1, math.ceil(error.retry_after)))
        return APIError(429, str(error), "overloaded", headers={"Retry-After": retry_after})
    if isinstance(error, WorkerStoppedError):
        return APIError(503, str(error), "shutting_down", headers={"Retry-After": "5"})
    log.exception("inference failed", exc_info=error)
    return APIError(500, "inference failed on the server; the request was not processed", "internal_error")


#: what an item of a field whose items are a union of forms must be, for a message naming the item
_ITEM_FORMS = {"documents": 'a string or an object with a "text" string', "texts": "a string"}
#: pydantic's names for a union's members that look like field names (the others do not: "RerankDocument",
#: "function-after[…]", "list[int]"; qwembed's JSON fields are snake_case)
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "bytes", "list", "dict", "none"})
_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def _is_member(part: object) -> bool:
    """Whether a part of an error's location names a union's member (or a tagged union's tag)."""
    return isinstance(part, str) and (part in _TYPE_NAMES or not _FIELD_NAME.fullmatch(part))


def _raw_location(error: dict) -> list:
    loc = list(error.get("loc", ()))
    return loc[1:] if loc[:1] == ["body"] else loc


def _field_path(loc: list) -> list:
    """The location as the client wrote the field: union members' names left out."""
    return [part for part in loc if not _is_member(part)]


def _where(path: list) -> str:
    """``["documents", 0, "text"]`` → ``documents[0].text``, as the engine names items (``input[3]``)."""
    name = str(path[0]) if path else "the request body"
    for part in path[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def _union_failure(errors: list) -> list | None:
    """Where every member of a union failed for one value (pydantic reports one error per member,
    each located under the member's name): that value's field path, else None."""
    first = _raw_location(errors[0])
    others = [_raw_location(error) for error in errors[1:]]
    for depth in reversed(range(len(first))):
        label = first[depth]
        if _is_member(label) and any(
            len(other) > depth
            and other[:depth] == first[:depth]
            and other[depth] != label
            and _is_member(other[depth])
            for other in others
        ):
            return _field_path(first[:depth])
    return None


def _validation_message(error: RequestValidationError) -> tuple[str, str | None, str]:
    """One clear message and a stable code for pydantic's list of errors."""
    errors = error.errors()
    if not errors:
        return "invalid request", None, "invalid_request"
    first = errors[0]
    location = _field_path(_raw_location(first))
    field = str(location[0]) if location else None
    kinds = {e.get("type") for e in errors}
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None, "invalid_json"
    unicode_error = next((e for e in errors if e.get("type") == "string_unicode"), None)
    if unicode_error is not None:
        # named like the engine's "input[3]": the field and its list indices
        loc = _field_path(_raw_location(unicode_error))
        name = str(loc[0]) if loc else "text"
        where = name + "".join(f"[{part}]" for part in loc[1:] if isinstance(part, int))
        return lone_surrogate_message(where), name, "invalid_text"
    if first.get("type") == "qwembed":  # (schemas.qwembed_error: written for the client already)
        context = first.get("ctx") or {}
        return str(first.get("msg")), context.get("param"), str(context.get("code", "invalid_request"))
    union = _union_failure(errors) if field != "input" else None
    if first.get("type") == "missing" and field and union is None:
        return f"{_where(location)} is required", field, "missing_field"
    if field in ("documents", "texts", "query") and kinds & {"string_too_short", "too_short"}:
        return f"{field} must not be empty", field, "empty_input"
    if field == "input":
        # `input` is a union of four shapes: pydantic reports a failure per shape, so name them all
        if kinds & {"string_too_short", "too_short"}:
            # an empty text in a list is named, as the engine names an over-long one (input[3])
            empty_item = next(
                (
                    path
                    for path in (
                        _field_path(_raw_location(e)) for e in errors if e.get("type") == "string_too_short"
                    )
                    if len(path) == 2 and isinstance(path[1], int)
                ),
                None,
            )
            if empty_item is not None:
                return (
                    f"{_where(empty_item)} is an empty string "
                    "(refused, as by OpenAI's API; send a space if you mean one)",
                    "input",
                    "empty_input",
                )
            return "input must not be empty (no empty list, no empty string)", "input", "empty_input"
        return (
            "input must be a string, a list of strings, a list of token ids (integers ≥ 0) "
            "or a list of non-empty token-id lists",
            "input",
            "invalid_input",
        )
    if field in _ITEM_FORMS:
        # one item of the wrong type (for a union: every member failed), or no list at all
        item = union if union is not None else location
        if len(item) == 2 and isinstance(item[1], int):
            return f"{_where(item)} must be {_ITEM_FORMS[field]}", field, "invalid_input"
        if location == [field] and first.get("type") == "list_type":
            return f"{field} must be a list, each item {_ITEM_FORMS[field]}", field, "invalid_input"
    detail = first.get("msg", "invalid request")
    if union is not None:
        return f"{_where(union)} matches none of the forms it may take ({detail})", field, "invalid_request"
    return (f"{_where(location)}: {detail}" if location else detail), field, "invalid_request"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    # asked of the router itself, method by method: FastAPI keeps included routers' routes behind
    # an opaque wrapper, so reading each route's path and methods found none of them
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> Response:
        return error_response(error.status, error.message, error.code, error.param, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> Response:
        message, param, code = _validation_message(error)
        return error_response(400, message, code, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 405:
            # Starlette names only the first route whose path matched; RFC 9110 wants them all
            error.headers = {"Allow": ", ".join(_allowed_methods(request))}
        phrase = (
            HTTPStatus(error.status_code).phrase if error.status_code in HTTPStatus._value2member_map_ else ""
        )
        message = error.detail if isinstance(error.detail, str) else phrase
        code = phrase.lower().replace(" ", "_") or "http_error"
        return error_response(error.status_code, message, code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return error_response(500, "internal server error", "internal_error")
