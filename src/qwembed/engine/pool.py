"""The models a server runs, each behind its own batching worker, and the embed pipeline they share.

A route hands the pool a parsed request; the pool turns texts into token ids (off the event loop),
queues them on the model's worker, waits, and applies ``dimensions``. That is the whole path from
request to vector.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..backends import Encoder, ModelCard
from .inputs import EmbedOptions, tokenize_ids, tokenize_texts
from .postprocess import check_dimensions, truncate_dimensions
from .worker import BatchObserver, BatchWorker


class UnknownModelError(LookupError):
    def __init__(self, name: str, served: Sequence[str]):
        super().__init__(f"model {name!r} is not served here; served models: {', '.join(served)}")
        self.served = list(served)


@dataclass(frozen=True)
class BatchSettings:
    max_batch_tokens: int = 16384
    max_batch_size: int = 128
    max_queue_items: int = 16384
    #: refuse new work (429) when the queued work would take longer than this many seconds
    max_queue_wait: float | None = 5.0


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray
    token_counts: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


@dataclass
class ServedEncoder:
    encoder: Encoder
    worker: BatchWorker


class ModelPool:
    def __init__(self, settings: BatchSettings | None = None):
        self.settings = settings or BatchSettings()
        self._encoders: dict[str, ServedEncoder] = {}

    def add_encoder(self, encoder: Encoder) -> None:
        if encoder.name in self._encoders:
            raise ValueError(f"two models are named {encoder.name!r}; rename one (--served-name)")
        worker = BatchWorker(
            encoder.embed_token_ids,
            name=encoder.name,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_batch_size=self.settings.max_batch_size,
            max_queue_items=self.settings.max_queue_items,
            max_queue_wait=self.settings.max_queue_wait,
        )
        self._encoders[encoder.name] = ServedEncoder(encoder, worker)

    def start(self) -> None:
        for served in self._encoders.values():
            served.worker.start()

    def observe_with(self, make_observer: Callable[[str], BatchObserver]) -> None:
        """Report every worker's batches (e.g. to Prometheus) without the engine knowing the exporter."""
        for name, served in self._encoders.items():
            served.worker.observer = make_observer(name)

    @property
    def names(self) -> list[str]:
        return list(self._encoders)

    def cards(self) -> list[ModelCard]:
        return [served.encoder.card() for served in self._encoders.values()]

    def queue_depth(self, name: str) -> int:
        return self._encoders[name].worker.queue_depth

    def encoder(self, name: str) -> Encoder:
        return self._served(name).encoder

    def _served(self, name: str) -> ServedEncoder:
        try:
            return self._encoders[name]
        except KeyError:
            raise UnknownModelError(name, self.names) from None

    def tokenize(
        self, name: str, inputs: Sequence[str] | Sequence[Sequence[int]], options: EmbedOptions
    ) -> list[list[int]]:
        encoder = self._served(name).encoder
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
        served = self._served(name)
        check_dimensions(dimensions, served.encoder.dimension)
        # Tokenising a large request takes milliseconds: keep it off the event loop.
        ids = await asyncio.to_thread(self.tokenize, name, inputs, options)
        vectors = await served.worker.run(ids)
        return Embeddings(truncate_dimensions(vectors, dimensions), [len(x) for x in ids])

    def warm_up(self) -> None:
        """Start the workers and run one tiny batch per model, so the first client does not pay
        for lazy initialisation."""
        self.start()
        for served in self._encoders.values():
            encoder = served.encoder
            served.worker.run_sync(tokenize_texts(encoder, ["warm-up"], EmbedOptions()))

    def close(self, timeout: float | None = None) -> None:
        for served in self._encoders.values():
            served.worker.stop(timeout)
