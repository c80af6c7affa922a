"""``create_app``: wires routes, errors, limits, keys and metrics around a :class:`ModelPool`."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__
from ..engine.pool import ModelPool
from .errors import install_error_handlers
from .limits import BodyLimits
from .metrics import Metrics
from .observe import RequestMetrics
from .routes import build_router
from .settings import ServerSettings


def create_app(
    pool: ModelPool,
    settings: ServerSettings | None = None,
    metrics: Metrics | None = None,
    shutdown_grace: float = 30.0,
) -> FastAPI:
    settings = settings or ServerSettings()
    metrics = metrics or Metrics()
    state = {"ready": False}
    pool.observe_with(metrics.observer)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await asyncio.to_thread(pool.warm_up)
        state["ready"] = True
        yield
        state["ready"] = False  # tell load balancers first, then drain
        await asyncio.to_thread(pool.close, shutdown_grace)

    app = FastAPI(
        title="qwembed",
        version=__version__,
        description="OpenAI-compatible text embeddings for Qwen3-Embedding and sentence-transformers models.",
        lifespan=lifespan,
    )
    app.state.pool = pool
    app.state.metrics = metrics
    app.state.readiness = state
    install_error_handlers(app)
    app.include_router(build_router(pool, settings, metrics, state))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(BodyLimits, max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
