"""Running the app under uvicorn: a drain that load balancers can follow, and slow clients cut off."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("qwembed.server")


class _HeaderDeadlineProtocol(H11Protocol):
    """uvicorn waits forever for a request's headers; a client trickling them a byte at a time
    (slowloris) would hold its connection for good. This closes connections whose headers have not
    arrived ``header_timeout`` seconds after the connection opened or the previous response ended.
    Idle keep-alive connections are already closed by uvicorn's own keep-alive timeout."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _cancel_header_deadline(self) -> None:
        if getattr(self, "_header_deadline", None) is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers arrived in full
            self._cancel_header_deadline()

    def on_response_complete(self) -> None:
        self._arm_header_deadline()  # before super(): it may start a pipelined request at once
        super().on_response_complete()

    def _headers_timed_out(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle and not self.transport.is_closing():
            log.info("closing a connection whose request headers did not arrive in %gs", self.header_timeout)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)


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
) -> uvicorn.Server:
    protocol = type("HeaderDeadlineProtocol", (_HeaderDeadlineProtocol,), {"header_timeout": header_timeout})
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_level=log_level,
        access_log=False,  # request bodies and paths stay out of the logs by default
        timeout_graceful_shutdown=int(shutdown_grace),
    )
    return _DrainingServer(config, app)


def run_server(app: FastAPI, **options) -> None:
    build_server(app, **options).run()
