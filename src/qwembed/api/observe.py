"""ASGI middleware that counts requests and error codes and times them, for /metrics."""

from __future__ import annotations

import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        error_body = b""

        async def observing_send(message: Message) -> None:
            nonlocal status, error_body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400 and len(error_body) < 4096:
                error_body += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        except Exception:
            # answered outside this middleware by the catch-all handler (errors.py), whose body
            # this send never sees: count it under the code that body carries
            error_body = b'{"error": {"code": "internal_error"}}'
            raise
        finally:
            # the route's template (/v1/kb/{name}), set by the router; unknown paths share one
            # label so that scanners cannot blow up the label set
            matched = scope.get("route")
            route = getattr(matched, "path", None) or "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
            if status >= 400:
                self.metrics.errors.labels(_error_code(error_body, status)).inc()


def _error_code(body: bytes, status: int) -> str:
    try:
        return str(orjson.loads(body)["error"]["code"])
    except Exception:
        return f"http_{status}"
