"""Running the app under uvicorn: a C HTTP parser and event loop where installed, a deadline for
request headers on either parser, a drain that load balancers can follow."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Generator
from typing import Literal

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("qwembed.server")

HttpParser = Literal["auto", "httptools", "h11"]
EventLoop = Literal["auto", "uvloop", "asyncio"]


class _HeaderDeadline:
    """uvicorn waits forever for a request's headers; a client trickling them a byte at a time
    (slowloris) would hold its connection for good. This closes connections whose headers have not
    arrived ``header_timeout`` seconds after the connection opened or the previous response ended.
    Idle keep-alive connections are already closed by uvicorn's own keep-alive timeout.

    Mixed in before a uvicorn protocol class; each parser's subclass below calls
    ``_cancel_header_deadline`` from the hook where that parser has a request's headers in full."""

    header_timeout: float = 10.0
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        self._arm_header_deadline()  # before super(): it may start a pipelined request at once
        super().on_response_complete()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_timed_out)  # type: ignore[attr-defined]

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_timed_out(self) -> None:
        cycle = self.cycle  # type: ignore[attr-defined]
        idle = cycle is None or cycle.response_complete
        if idle and not self.transport.is_closing():  # type: ignore[attr-defined]
            log.info("closing a connection whose request headers did not arrive in %gs", self.header_timeout)
            self.transport.close()  # type: ignore[attr-defined]


class _H11WithHeaderDeadline(_HeaderDeadline, H11Protocol):
    """h11, pure Python: the fallback where httptools is not installed."""

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a new request cycle starts once its headers are in
            self._cancel_header_deadline()


def _httptools_protocol() -> type:
    # imported here: httptools is optional, and uvicorn's module imports it at the top
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class _HttpToolsWithHeaderDeadline(_HeaderDeadline, HttpToolsProtocol):
        """httptools, llhttp's C parser: a fraction of h11's time per request on a loaded server."""

        def on_headers_complete(self) -> None:
            self._cancel_header_deadline()
            super().on_headers_complete()

    return _HttpToolsWithHeaderDeadline


def protocol_class(http: HttpParser = "auto", header_timeout: float = 10.0) -> type:
    """uvicorn's protocol for ``http`` with the header deadline: "auto" takes httptools where it is
    installed (it is a dependency on every platform with wheels) and h11 elsewhere."""
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    base = _httptools_protocol() if http == "httptools" else _H11WithHeaderDeadline
    return type(f"HeaderDeadline{base.__name__}", (base,), {"header_timeout": header_timeout})


class _DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, report not-ready first, then let uvicorn stop accepting and drain."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self._app = app

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises the captured signal after shutting down, so the process would end
        # "killed by SIGTERM"; after a completed drain we exit 0 instead, as supervisors expect.
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    def handle_exit(self, sig, frame) -> None:
        self._app.state.readiness["ready"] = False
        log.info("signal %s: readiness off, finishing in-flight requests", sig)
        super().handle_exit(sig, frame)


def build_server(
    app: FastAPI,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    shutdown_grace: float = 30.0,
    header_timeout: float = 10.0,
    http: HttpParser = "auto",
    loop: EventLoop = "auto",
) -> uvicorn.Server:
    """``loop="auto"`` is uvicorn's own choice: uvloop where installed, asyncio's loop elsewhere."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(http, header_timeout),
        loop=loop,
        log_level=log_level,
        access_log=False,  # request bodies and paths stay out of the logs by default
        timeout_graceful_shutdown=int(shutdown_grace),
    )
    return _DrainingServer(config, app)


def run_server(app: FastAPI, **options) -> None:
    build_server(app, **options).run()
