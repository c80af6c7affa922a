"""Running the app under uvicorn, with a shutdown that load balancers can follow."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("qwembed.server")


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


def run_server(app: FastAPI, *, host: str, port: int, log_level: str, shutdown_grace: float) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # request bodies and paths stay out of the logs by default
        timeout_graceful_shutdown=int(shutdown_grace),
    )
    _DrainingServer(config, app).run()
