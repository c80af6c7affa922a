"""What a request meets before its route's code runs, in an order that leaks nothing: the API key
first (a client without one learns nothing about how its body would be read), then the body's
content type and coding, then the body itself — read and parsed here, so that every way it can
fail has a documented code instead of FastAPI's generic "There was an error parsing the body"."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .auth import KeyChecker
from .errors import APIError, client_closed_response


def require_json(request: Request) -> None:
    """Bodies are JSON and must say so. A missing content type is refused too: browsers send such
    bodies cross-site without a CORS preflight, so reading them as JSON would open the server to
    request forgery from any web page (FastAPI's strict content-type rule)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise APIError(
            415,
            f"content type {media or 'missing'!r} is not supported; send Content-Type: application/json",
            "unsupported_media_type",
        )


def require_identity_encoding(request: Request) -> None:
    """A compressed body is refused rather than decoded: decoding would let a few kilobytes of gzip
    expand past --max-body-bytes before anything could count them, and no OpenAI or TEI client
    compresses its requests. RFC 7694: 415, and ``Accept-Encoding`` says what is taken."""
    codings = [
        coding.strip().lower()
        for header in request.headers.getlist("content-encoding")
        for coding in header.split(",")
    ]
    unsupported = [coding for coding in codings if coding not in ("", "identity")]
    if unsupported:
        raise APIError(
            415,
            f"Content-Encoding {', '.join(unsupported)!r} is not supported; send the body uncompressed",
            "unsupported_content_encoding",
            headers={"Accept-Encoding": "identity"},
        )


def parse_json(body: bytes) -> Any:
    """JSON as RFC 8259 has it (UTF-8, a leading BOM tolerated), each failure a clear ``invalid_json``.
    Lone surrogate escapes parse, as JSON allows; the schemas refuse them as ``invalid_text``."""
    if not body.strip():
        raise APIError(400, "the request body is empty; send a JSON object", "invalid_json")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        message = f"the request body is not valid UTF-8 (byte {error.start}); JSON must be UTF-8"
        raise APIError(400, message, "invalid_json") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise APIError(
            400,
            f"the request body is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})",
            "invalid_json",
        ) from None
    except RecursionError:
        raise APIError(400, "the request body is not valid JSON: nested too deeply", "invalid_json") from None
    except ValueError as error:  # a number past Python's digit limit for int conversion (4,300)
        raise APIError(400, f"the request body cannot be read: {error}", "invalid_json") from None


class _JSONRequest(Request):
    """Parses its body with :func:`parse_json`, once; FastAPI's own ``request.json()`` call then
    gets the cached value."""

    async def json(self) -> Any:
        if not hasattr(self, "_parsed_json"):
            self._parsed_json = parse_json(await self.body())
        return self._parsed_json


class CheckedRoute(APIRoute):
    """FastAPI reads and parses a body before it runs any dependency, the key check included, and
    turns every read failure but a JSON syntax error into one generic 400. This route does the
    checks in the order above first; the key dependency stays on the route as well, so a route
    added without this class is still protected."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        # the router's dependencies are merged into each route's when the route is added
        keys = next((d.dependency for d in self.dependencies if isinstance(d.dependency, KeyChecker)), None)
        reads_body = self.body_field is not None

        async def checked_handler(request: Request) -> Response:
            if keys is not None:
                await keys(request)
            if reads_body:
                request = _JSONRequest(request.scope, request.receive)
                require_json(request)
                require_identity_encoding(request)
                try:
                    await request.json()
                except ClientDisconnect:  # hung up mid-upload (or BodyLimits answered 413/408 for us)
                    return client_closed_response()
            return await handler(request)

        return checked_handler
