"""The models a server runs, each behind its own batching worker, and the pipelines they share.

A route hands the pool a parsed request; the pool turns texts into token ids (off the event loop),
queues them on the model's worker, waits, and post-processes (``dimensions`` for embeddings,
ordering for reranking). That is the whole path from request to answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..backends import Encoder, ModelCard, Reranker
from .batching import default_batch_size, default_batch_tokens
from .embedder import Embedder
from .inputs import EmbedOptions, check_texts, tokenize_ids, tokenize_texts
from .openmp import release_thread_pool
from .postprocess import check_dimensions, truncate_dimensions
from .rerank import RerankResult, rank
from .streams import Streams
from .worker import BatchObserver, BatchWorker

Kind = Literal["embedding", "reranker"]


class UnknownModelError(LookupError):
    def __init__(self, name: str, served: Sequence[str], kind: Kind | None = None):
        what = f"{kind} models" if kind else "models"
        served_text = ", ".join(served) or "none"
        super().__init__(f"model {name!r} is not served here; served {what}: {served_text}")
        self.served = list(served)


class ModelRequiredError(ValueError):
    def __init__(self, kind: Kind, served: Sequence[str]):
        super().__init__(f"model is required: several {kind} models are served ({', '.join(served)})")


@dataclass(frozen=True)
class BatchSettings:
    #: None: chosen per model's device (engine.batching.default_batch_tokens)
    max_batch_tokens: int | None = None
    #: None: chosen per model's device (engine.batching.default_batch_size)
    max_batch_size: int | None = None
    max_queue_items: int = 16384
    #: refuse new work (429) when the queued work would take longer than this many seconds
    max_queue_wait: float | None = 5.0
    #: tokens of recent batches needed before the throughput estimate is trusted for admission
    min_rate_sample_tokens: int = 2048
    #: forward passes at once per model; None: two on a multi-core CPU, one on a GPU (streams.py)
    streams: int | None = None


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray
    token_counts: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


@dataclass(frozen=True)
class Ranking:
    results: list[RerankResult]
    total_tokens: int


@dataclass
class ServedModel:
    model: Encoder | Reranker
    worker: BatchWorker

    @property
    def kind(self) -> Kind:
        return "embedding" if isinstance(self.model, Encoder) else "reranker"


class ModelPool:
    def __init__(self, settings: BatchSettings | None = None):
        self.settings = settings or BatchSettings()
        self._models: dict[str, ServedModel] = {}

    # ---- what is served -------------------------------------------------------------------
    def add_encoder(self, encoder: Encoder) -> None:
        self._add(encoder, encoder.embed_token_ids)

    def add_reranker(self, reranker: Reranker) -> None:
        self._add(reranker, reranker.score_token_ids)

    def _add(self, model: Encoder | Reranker, run_batch) -> None:
        if model.name in self._models:
            raise ValueError(f"two models are named {model.name!r}; rename one (--served-name)")
        worker = BatchWorker(
            run_batch,
            name=model.name,
            max_batch_tokens=self.settings.max_batch_tokens or default_batch_tokens(model),
            max_batch_size=self.settings.max_batch_size or default_batch_size(model),
            max_queue_items=self.settings.max_queue_items,
            max_queue_wait=self.settings.max_queue_wait,
            min_rate_sample_tokens=self.settings.min_rate_sample_tokens,
            padded_batches=not model.packed,
            streams=Streams.for_model(model, self.settings.streams),
        )
        self._models[model.name] = ServedModel(model, worker)
        # the model loaded on this thread, its checks on every core: the OpenMP workers they left
        # parked here would slow every parallel region of the streams' lone windows (openmp.py)
        release_thread_pool()

    def observe_with(self, make_observer: Callable[[str], BatchObserver]) -> None:
        """Report every worker's batches (e.g. to Prometheus) without the engine knowing the exporter."""
        for name, served in self._models.items():
            served.worker.observer = make_observer(name)

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def names_of(self, kind: Kind) -> list[str]:
        return [name for name, served in self._models.items() if served.kind == kind]

    def cards(self) -> list[ModelCard]:
        return [served.model.card() for served in self._models.values()]

    def queue_depth(self, name: str) -> int:
        return self._models[name].worker.queue_depth

    def resolve(self, name: str | None, kind: Kind) -> str:
        """The served model a request means: the one named, or the only one of its kind."""
        candidates = self.names_of(kind)
        if not name:
            if len(candidates) == 1:
                return candidates[0]
            raise ModelRequiredError(kind, candidates)
        if name not in candidates:
            raise UnknownModelError(name, candidates, kind)
        return name

    def encoder(self, name: str) -> Encoder:
        return self._models[self.resolve(name, "embedding")].model  # type: ignore[return-value]

    def reranker(self, name: str) -> Reranker:
        return self._models[self.resolve(name, "reranker")].model  # type: ignore[return-value]

    def embedder(self, name: str) -> Embedder:
        """A library-style :class:`Embedder` for a served model whose forward passes go through the
        model's worker: other server features (the knowledge base) share its batching, queue limits
        and metrics instead of competing with it for the model. Call it from a thread, not the loop."""
        served = self._models[self.resolve(name, "embedding")]
        return _WorkerEmbedder(served.model, served.worker)  # type: ignore[arg-type]

    # ---- embeddings ---------------------------------------------------------------------------
    def tokenize(
        self, name: str, inputs: Sequence[str] | Sequence[Sequence[int]], options: EmbedOptions
    ) -> list[list[int]]:
        encoder = self.encoder(name)
        if inputs and isinstance(inputs[0], str):
            return tokenize_texts(encoder, inputs, options)  # type: ignore[arg-type]
        return tokenize_ids(encoder, inputs, options)  # type: ignore[arg-type]

    async def embed(
        self,
        name: str,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        options: EmbedOptions,
        dimensions: int | None = None,
    ) -> Embeddings:
        encoder = self.encoder(name)
        check_dimensions(dimensions, encoder.dimension)
        # Tokenising a large request takes milliseconds: keep it off the event loop.
        ids = await asyncio.to_thread(self.tokenize, name, inputs, options)
        vectors = await self._models[name].worker.run(ids)
        return Embeddings(truncate_dimensions(vectors, dimensions), [len(x) for x in ids])

    # ---- reranking ----------------------------------------------------------------------------
    async def rerank(
        self,
        name: str,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        top_n: int | None = None,
    ) -> Ranking:
        reranker = self.reranker(name)

        def tokenize() -> list[list[int]]:
            check_texts([query, *documents])
            return reranker.tokenize_pairs(query, documents, instruction)

        sequences = await asyncio.to_thread(tokenize)
        scores = await self._models[name].worker.run(sequences)
        return Ranking(rank(scores, top_n), sum(len(ids) for ids in sequences))

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        for served in self._models.values():
            served.worker.start()

    def warm_up(self) -> None:
        """Start the workers and run one tiny batch per model, so the first client does not pay
        for lazy initialisation."""
        self.start()
        for served in self._models.values():
            model = served.model
            if isinstance(model, Encoder):
                sequences = tokenize_texts(model, ["warm-up"], EmbedOptions())
            else:
                sequences = model.tokenize_pairs("warm-up", ["warm-up"], None)
            served.worker.run_sync(sequences)

    def close(self, timeout: float | None = None) -> None:
        for served in self._models.values():
            served.worker.stop(timeout)


class _WorkerEmbedder(Embedder):
    def __init__(self, encoder: Encoder, worker: BatchWorker):
        super().__init__(encoder)
        self._worker = worker

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        return self._worker.run_sync(ids)
