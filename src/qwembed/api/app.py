"""``create_app``: wires routes, errors, limits, keys and metrics around a :class:`ModelPool`."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__
from ..engine.pool import ModelPool
from .auth import KeyChecker
from .errors import install_error_handlers
from .limits import BodyLimits
from .metrics import Metrics
from .observe import RequestMetrics
from .rerank_routes import build_rerank_router
from .routes import build_router
from .settings import ServerSettings
from .tei_routes import build_tei_router

if TYPE_CHECKING:
    from ..kb import KnowledgeBaseManager

log = logging.getLogger("qwembed.api")

#: how often knowledge-base collections fold new rows into their indexes (ANN past a size, keywords)
KB_MAINTENANCE_SECONDS = 60.0


async def _maintain_collections(kb: KnowledgeBaseManager) -> None:
    """Index building takes seconds to minutes: it runs here, in the background, never on a request."""
    while True:
        await asyncio.sleep(KB_MAINTENANCE_SECONDS)
        for name in await asyncio.to_thread(kb.names):
            try:
                await asyncio.to_thread(lambda n=name: kb.get(n).maintain())
            except Exception:
                log.exception("maintenance of collection %r failed; will retry", name)


def create_app(
    pool: ModelPool,
    settings: ServerSettings | None = None,
    metrics: Metrics | None = None,
    shutdown_grace: float = 30.0,
    kb: KnowledgeBaseManager | None = None,
) -> FastAPI:
    settings = settings or ServerSettings()
    metrics = metrics or Metrics()
    state = {"ready": False}
    pool.observe_with(metrics.observer)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await asyncio.to_thread(pool.warm_up)
        maintenance = asyncio.create_task(_maintain_collections(kb)) if kb is not None else None
        state["ready"] = True
        yield
        state["ready"] = False  # tell load balancers first, then drain
        if maintenance is not None:
            maintenance.cancel()
            with suppress(asyncio.CancelledError):
                await maintenance
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
    keys = KeyChecker(settings.api_keys)
    app.include_router(build_router(pool, settings, metrics, state, keys))
    app.include_router(build_rerank_router(pool, settings, state, keys))
    app.include_router(build_tei_router(pool, settings, state, keys))
    if kb is not None:
        from .kb_routes import build_kb_router

        app.include_router(build_kb_router(kb, keys))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(BodyLimits, max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
