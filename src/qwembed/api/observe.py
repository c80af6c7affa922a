"""ASGI middleware that counts requests and error codes and times them, for /metrics, and logs each
error response in one line (the access log is off: it costs every request), a few a second at most."""

from __future__ import annotations

import logging
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics

log = logging.getLogger("qwembed.api.errors")

#: error lines logged per second at most: an overload answers thousands of 429s, which /metrics
#: counts; the log names a few and how many more there were
ERROR_LINES_PER_SECOND = 5


class ErrorLog:
    """One line per error response, ``ERROR_LINES_PER_SECOND`` at most; the next line logged after
    a busy second says how many were left out."""

    def __init__(self, per_second: int = ERROR_LINES_PER_SECOND):
        self.per_second = per_second
        self.second = 0
        self.logged = 0
        self.left_out = 0

    def __call__(self, method: str, path: str, status: int, code: str, message: str) -> None:
        second = int(time.monotonic())
        if second != self.second:
            self.second, self.logged = second, 0
        if self.logged >= self.per_second:
            self.left_out += 1
            return
        self.logged += 1
        more = f" ({self.left_out} more error responses not logged)" if self.left_out else ""
        self.left_out = 0
        # 5xx are ours to fix (their traceback is logged where they happen); 4xx are the client's
        level = logging.WARNING if status >= 500 else logging.INFO
        detail = f": {message}" if message else ""
        log.log(level, "%s %s → %d %s%s%s", method, path, status, code, detail, more)


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics
        self.error_log = ErrorLog()

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
                code, message = _code_and_message(error_body, status)
                self.metrics.errors.labels(code).inc()
                self.error_log(scope["method"], scope["path"], status, code, message)


#: characters of an error's message in its log line
_MESSAGE_CHARS = 300


def _code_and_message(body: bytes, status: int) -> tuple[str, str]:
    try:
        error = orjson.loads(body)["error"]
        code = str(error["code"])
    except Exception:
        return f"http_{status}", ""
    message = str(error.get("message") or "")
    return code, message if len(message) <= _MESSAGE_CHARS else message[: _MESSAGE_CHARS - 1] + "…"
