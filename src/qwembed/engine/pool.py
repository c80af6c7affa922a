"""The models a server runs, each behind its own batching worker, and the pipelines they share.

A route hands the pool a parsed request; the pool has the model's worker admit it (or refuse it at
once when its queue is full), turns texts into token ids (off the event loop) part by part, the
worker counting each part's tokens against its queue, queues them, waits, and post-processes
(``dimensions`` and ``normalize`` for embeddings, ordering for reranking). That is the whole path
from request to answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..backends import Encoder, ModelCard, PairTooLongError, Reranker
from .batching import check_sizes, default_batch_size, default_batch_tokens
from .embedder import Embedder
from .inputs import EmbedOptions, tokenize_ids, tokenize_texts
from .openmp import release_thread_pool
from .postprocess import check_dimensions, check_normalize, embedding_forward, finish
from .rerank import NO_CAPS, RerankResult, TokenCaps, checked_pair_inputs, ranked, reranking_forward
from .streams import Streams
from .worker import Admission, BatchObserver, BatchWorker

Kind = Literal["embedding", "reranker"]

#: a request is tokenised in parts of at most this many inputs and characters, the worker checking
#: its admission after each (``BatchWorker.hold``): one that would wait too long stops there rather
#: than after all its inputs (2,048 texts of ~360 tokens took seconds). Parts this size cost the
#: tokenizer little more than one call for all.
TOKENIZE_PART_ITEMS = 256
TOKENIZE_PART_CHARS = 65536


class UnknownModelError(LookupError):
    def __init__(self, name: str, served: Sequence[str], kind: Kind | None = None):
        what = f"{kind} models" if kind else "models"
        served_text = ", ".join(served) or "none"
        super().__init__(f"model {name!r} is not served here; served {what}: {served_text}")
        self.served = list(served)


class NoModelOfKindError(UnknownModelError):
    """Nothing of the kind a request needs is served (a reranking request to an embedding server)."""

    def __init__(self, kind: Kind, served: Sequence[str]):
        LookupError.__init__(
            self, f"no {kind} model is served here; served models: {', '.join(served) or 'none'}"
        )
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

    def __post_init__(self) -> None:
        check_sizes(
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=self.max_batch_size,
            max_queue_items=self.max_queue_items,
            min_rate_sample_tokens=self.min_rate_sample_tokens,
            streams=self.streams,
        )
        if self.max_queue_wait is not None and not self.max_queue_wait >= 0:
            raise ValueError(f"max_queue_wait must be at least 0 (or None), got {self.max_queue_wait}")


@dataclass(frozen=True)
class BatchLimits:
    """A served model's forward-pass limits (``BatchSettings`` or the device's defaults)."""

    max_batch_tokens: int
    max_batch_size: int


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
        # pooled vectors: a batch mixes requests with and without normalisation (``embed`` finishes each)
        self._add(encoder, embedding_forward(encoder))

    def add_reranker(self, reranker: Reranker) -> None:
        # logits: a batch mixes requests that want them with requests that want scores (``rerank``)
        self._add(reranker, reranking_forward(reranker))

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

    def card(self, name: str) -> ModelCard:
        """A served model's card, by its served name (``resolve`` first for a request's name)."""
        return self._models[name].model.card()

    def batch_limits(self, name: str) -> BatchLimits:
        """The forward-pass limits a served model's worker batches by, defaults resolved."""
        worker = self._models[name].worker
        return BatchLimits(worker.max_batch_tokens, worker.max_batch_size)

    def compute(self, name: str) -> str | None:
        """What a served model computes in, and where (``Encoder.compute``, e.g. ``"bfloat16
        matmuls, float32 elsewhere on cpu"``); None for models that do not say (rerankers)."""
        model = self._models[name].model
        return model.compute if isinstance(model, Encoder) else None

    def resolve(self, name: str | None, kind: Kind) -> str:
        """The served model a request means: the one named, or the only one of its kind."""
        candidates = self.names_of(kind)
        if not candidates:
            raise NoModelOfKindError(kind, [f"{card.name} ({card.kind})" for card in self.cards()])
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
        self,
        name: str,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        options: EmbedOptions,
        admission: Admission | None = None,
    ) -> list[list[int]]:
        """Token ids for a request's inputs; with an ``admission``, part by part, each part's tokens
        held on the model's worker (which may refuse the request there: ``OverloadedError``)."""
        encoder = self.encoder(name)
        worker = self._models[name].worker
        texts = bool(inputs) and isinstance(inputs[0], str)
        ids: list[list[int]] = []
        for start, end in _parts(inputs) if admission is not None else [(0, len(inputs))]:
            if texts:
                part = tokenize_texts(encoder, inputs[start:end], options, start)  # type: ignore[arg-type]
            else:
                part = tokenize_ids(encoder, inputs[start:end], options, start)  # type: ignore[arg-type]
            if admission is not None:
                worker.hold(admission, sum(map(len, part)))
            ids.extend(part)
        return ids

    async def embed(
        self,
        name: str,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        options: EmbedOptions,
        dimensions: int | None = None,
        normalize: bool = True,
    ) -> Embeddings:
        """``dimensions``: keep the first N components (Matryoshka); ``normalize``: L2-normalise
        (after the cut), else the model's pooled vectors as they are (TEI's and vLLM's
        ``normalize: false``; ``NormalizeUnsupportedError`` for a model without them)."""
        encoder = self.encoder(name)
        check_dimensions(dimensions, encoder.dimension)
        check_normalize(encoder, normalize)
        worker = self._models[name].worker
        # Admitted (or refused) before tokenising, which for a large request takes seconds.
        with worker.admitted(len(inputs)) as admission:
            # Tokenising a large request takes milliseconds to seconds: keep it off the event loop.
            ids = await asyncio.to_thread(self.tokenize, name, inputs, options, admission)
            vectors = await worker.run(ids, admission)
        vectors = finish(vectors, dimensions, normalize=normalize, pooled=encoder.has_pooled_vectors)
        return Embeddings(vectors, [len(x) for x in ids])

    # ---- reranking ----------------------------------------------------------------------------
    async def rerank(
        self,
        name: str,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        top_n: int | None = None,
        truncate: bool = True,
        caps: TokenCaps = NO_CAPS,
        raw: bool = False,
    ) -> Ranking:
        """``documents`` ranked against ``query``, best first, with the model's scores or with
        ``raw`` its logits (TEI's ``raw_scores``). The query and documents are first cut to the
        request's ``caps``; then an over-long pair is cut (the longer of query and document loses
        tokens) or, with ``truncate=False``, is a ``PairTooLongError``."""
        reranker = self.reranker(name)
        worker = self._models[name].worker

        def tokenize(admission: Admission) -> list[list[int]]:
            texts = checked_pair_inputs(query, documents, instruction)
            cut_query = caps.cut_query(reranker, query)
            sequences: list[list[int]] = []
            for start, end in _parts(texts, len(cut_query)):
                part_texts = caps.cut_documents(reranker, texts[start:end])
                try:
                    part = reranker.tokenize_pairs(cut_query, part_texts, instruction, truncate, caps.pair)
                except PairTooLongError as error:
                    raise error.at(start) from None
                worker.hold(admission, sum(map(len, part)))
                sequences.extend(part)
            return sequences

        with worker.admitted(len(documents)) as admission:  # as for embeddings
            sequences = await asyncio.to_thread(tokenize, admission)
            outputs = await worker.run(sequences, admission)
        return Ranking(ranked(reranker, outputs, top_n, raw), sum(len(ids) for ids in sequences))

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
    """The library's ``Embedder`` on a served model's worker (the knowledge base's ingestion and
    queries). A call larger than one of the worker's windows is bulk work there, taken when no
    request waits (worker.py): an ingestion then delays the server's requests by a window at most.
    A smaller one (a search's query) queues with the requests, in arrival order."""

    def __init__(self, encoder: Encoder, worker: BatchWorker):
        super().__init__(encoder)
        self._worker = worker

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        worker = self._worker
        bulk = len(ids) > worker.window_items or sum(map(len, ids)) > worker.window_tokens
        return worker.run_sync(ids, bulk=bulk)


def _parts(inputs: Sequence[str] | Sequence[Sequence[int]], extra: int = 0) -> list[tuple[int, int]]:
    """``inputs`` cut into ``(start, end)`` parts of at most ``TOKENIZE_PART_ITEMS`` inputs and,
    but for a single long one, ``TOKENIZE_PART_CHARS`` characters (token ids count as characters);
    ``extra``: characters every input brings besides its own (a reranker's query)."""
    parts: list[tuple[int, int]] = []
    start, chars = 0, 0
    for index, item in enumerate(inputs):
        size = len(item) + extra
        if index > start and (index - start >= TOKENIZE_PART_ITEMS or chars + size > TOKENIZE_PART_CHARS):
            parts.append((start, index))
            start, chars = index, 0
        chars += size
    if start < len(inputs):
        parts.append((start, len(inputs)))
    return parts
