"""A request the queue cannot take is refused before it is tokenised, not after; and the padded-
tokens metric counts what a padding-free forward computes.

The encoder here tokenises characters and waits on gates, so that the tests decide what is being
tokenised or embedded at each moment; nothing depends on how fast anything runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import httpx
import numpy as np
import pytest

from qwembed.api import create_app
from qwembed.backends import Encoder, InputTooLongError, InputType, TokenIds
from qwembed.engine import BatchWorker, OverloadedError
from qwembed.engine.inputs import EmbedOptions
from qwembed.engine.pool import TOKENIZE_PART_ITEMS, BatchSettings, ModelPool
from server_fixtures import running_server

TEXT = EmbedOptions()


class GatedEncoder(Encoder):
    """Characters as token ids. Tokenising texts that begin with a letter in ``gates`` waits for
    that letter's gate; embedding waits for ``embedding``. Remembers every text it tokenised."""

    backend = "test"

    def __init__(self) -> None:
        super().__init__(name="gated", source="test", dimension=2, max_tokens=1000, vocab_size=0x110000)
        self.gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}  # a gated letter's tokenisation has begun
        self.embedding = threading.Event()
        self.embedding.set()
        self.tokenized: list[str] = []
        self._lock = threading.Lock()

    def gate(self, letter: str) -> threading.Event:
        self.gates[letter], self.started[letter] = threading.Event(), threading.Event()
        return self.gates[letter]

    def count(self, letter: str) -> int:
        with self._lock:
            return sum(text.startswith(letter) for text in self.tokenized)

    def format(self, text: str, input_type: InputType | None, instruction: str | None) -> str:
        return text

    def tokenize(self, texts: Sequence[str]) -> list[TokenIds]:
        for letter in {text[:1] for text in texts} & set(self.gates):
            self.started[letter].set()
            assert self.gates[letter].wait(30)
        with self._lock:
            self.tokenized.extend(texts)
        return [[ord(c) for c in text] for text in texts]

    def embed_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        assert self.embedding.wait(30)
        return np.tile(np.array([1.0, 0.0], dtype=np.float32), (len(batch), 1))


def _pool(encoder: GatedEncoder, **settings) -> tuple[ModelPool, BatchWorker]:
    pool = ModelPool(BatchSettings(streams=1, **settings))
    pool.add_encoder(encoder)
    pool.start()
    return pool, pool._models[encoder.name].worker


def _measured(worker: BatchWorker, tokens_per_second: int) -> None:
    """As if the worker had measured this throughput over enough recent batches."""
    worker._recent.extend([(tokens_per_second, 1.0)] * 4)
    assert worker.tokens_per_second == tokens_per_second


async def _until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the worker"
        await asyncio.sleep(0.01)


def test_a_request_beyond_the_queue_is_refused_while_another_is_being_tokenised():
    encoder = GatedEncoder()
    pool, _ = _pool(encoder, max_queue_items=10)
    gate = encoder.gate("a")

    async def scenario() -> None:
        first = asyncio.create_task(pool.embed("gated", ["a" * 5] * 8, TEXT))
        await asyncio.to_thread(encoder.started["a"].wait, 30)  # its 8 inputs are being tokenised
        with pytest.raises(OverloadedError, match="full"):
            await pool.embed("gated", ["b" * 5] * 3, TEXT)  # 8 + 3 > 10
        assert encoder.count("b") == 0  # refused before any of it was tokenised
        gate.set()
        assert (await first).vectors.shape == (8, 2)
        # the room is given back once a request is answered: a request filling the queue is taken
        assert (await pool.embed("gated", ["c"] * 10, TEXT)).vectors.shape == (10, 2)

    asyncio.run(scenario())
    pool.close(5)


def test_a_request_that_cannot_wait_is_refused_before_tokenising():
    encoder = GatedEncoder()
    pool, worker = _pool(encoder, max_queue_wait=1.0)
    _measured(worker, 1000)
    encoder.embedding.clear()  # the worker holds on to what it takes

    async def scenario() -> None:
        first = asyncio.create_task(pool.embed("gated", ["a" * 300] * 5, TEXT))  # 1.5 s: taken, it came first
        await _until(lambda: worker.estimated_wait() >= 1.5)
        with pytest.raises(OverloadedError, match="busy") as refused:
            await pool.embed("gated", ["b" * 10] * 2048, TEXT)
        assert refused.value.retry_after >= 1.5
        assert encoder.count("b") == 0
        encoder.embedding.set()
        assert (await first).vectors.shape == (5, 2)

    asyncio.run(scenario())
    pool.close(5)


def test_a_request_that_would_wait_too_long_stops_tokenising_at_its_first_part():
    encoder = GatedEncoder()
    pool, worker = _pool(encoder, max_queue_wait=1.0)
    _measured(worker, 1000)
    encoder.embedding.clear()

    async def scenario() -> None:
        first = asyncio.create_task(pool.embed("gated", ["a" * 100] * 5, TEXT))  # 0.5 s queued
        await _until(lambda: worker.estimated_wait() >= 0.5)
        # 20,480 tokens: admitted on the queue's 0.5 s, refused once its first part is counted
        with pytest.raises(OverloadedError, match="busy"):
            await pool.embed("gated", ["b" * 10] * 2048, TEXT)
        assert encoder.count("b") == TOKENIZE_PART_ITEMS  # not all 2,048
        assert worker.estimated_wait() == pytest.approx(0.5)  # its tokens no longer count
        encoder.embedding.set()
        assert (await first).vectors.shape == (5, 2)

    asyncio.run(scenario())
    pool.close(5)


def test_requests_tokenised_side_by_side_count_against_each_other():
    encoder = GatedEncoder()
    pool, worker = _pool(encoder, max_queue_wait=1.0)
    _measured(worker, 1000)
    gate = encoder.gate("a")

    async def scenario() -> None:
        # The first comes to an empty queue: admitted whatever its size, like a lone request. Its
        # first part (65 texts of 1,000 tokens) is counted, then its second waits at the gate.
        first = asyncio.create_task(pool.embed("gated", ["c" * 1000] * 70 + ["a" * 1000] * 10, TEXT))
        await asyncio.to_thread(encoder.started["a"].wait, 30)
        assert worker.estimated_wait() == pytest.approx(65.0)
        with pytest.raises(OverloadedError, match="busy"):  # though nothing is queued yet
            await pool.embed("gated", ["b" * 100] * 5, TEXT)
        assert encoder.count("b") == 0
        gate.set()
        assert (await first).vectors.shape == (80, 2)

    asyncio.run(scenario())
    pool.close(5)


def test_a_failed_or_abandoned_tokenisation_gives_its_room_back():
    encoder = GatedEncoder()
    pool, _ = _pool(encoder, max_queue_items=10)

    async def scenario() -> None:
        with pytest.raises(InputTooLongError):
            await pool.embed("gated", ["a"] * 7 + ["a" * 2000], TEXT)
        encoder.gate("b")
        abandoned = asyncio.create_task(pool.embed("gated", ["b"] * 8, TEXT))
        await asyncio.to_thread(encoder.started["b"].wait, 30)
        abandoned.cancel()  # its client went away while it was tokenised
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        assert (await pool.embed("gated", ["c"] * 10, TEXT)).vectors.shape == (10, 2)
        encoder.gates["b"].set()

    asyncio.run(scenario())
    pool.close(5)


def test_work_submitted_directly_counts_requests_being_tokenised():
    """The knowledge base and the warm-up submit token ids without an admission of their own."""
    worker = BatchWorker(lambda batch: np.zeros((len(batch), 1), np.float32), max_queue_items=10).start()
    admission = worker.admit(8)
    with pytest.raises(OverloadedError):
        worker.submit([[1]] * 3)
    worker.release(admission)
    assert worker.submit([[1]] * 10).result(5).shape == (10, 1)
    worker.stop(5)


def test_the_route_answers_429_while_an_earlier_request_is_still_tokenised():
    encoder = GatedEncoder()
    pool = ModelPool(BatchSettings(max_queue_items=10, streams=1))
    pool.add_encoder(encoder)
    with running_server(create_app(pool)) as url:
        gate = encoder.gate("a")
        statuses: list[int] = []
        first = threading.Thread(
            target=lambda: statuses.append(
                httpx.post(f"{url}/v1/embeddings", json={"input": ["a"] * 8}, timeout=60).status_code
            )
        )
        first.start()
        assert encoder.started["a"].wait(30)
        refused = httpx.post(f"{url}/v1/embeddings", json={"input": ["b"] * 3}, timeout=60)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "overloaded"
        assert encoder.count("b") == 0 and not gate.is_set()  # at once: the first is still tokenised
        gate.set()
        first.join(60)
        assert statuses == [200]


# ---- the padded-tokens metric ------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int, int]] = []

    def batch_done(self, rows: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        self.batches.append((rows, tokens, padded_tokens))

    def queue_wait(self, seconds: float) -> None:
        pass


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "padding-free"])
def test_padded_tokens_are_what_the_forward_computed(padded):
    recorder = Recorder()
    worker = BatchWorker(
        lambda batch: np.zeros((len(batch), 1), np.float32), padded_batches=padded, observer=recorder
    ).start()
    worker.submit([[1] * 10, [1] * 2, [1] * 3]).result(5)
    worker.stop(5)
    assert recorder.batches == [(3, 15, 30 if padded else 15)]


# ---- bulk work (library calls on the worker: the knowledge base's ingestion) ---------------------


def test_requests_are_admitted_past_bulk_work_they_go_before():
    """Queued bulk work neither fills the requests' queue nor counts in their wait; it still counts
    for more bulk work, and work running counts for both."""
    encoder = GatedEncoder()
    encoder.embedding.clear()  # nothing finishes: all stays queued
    worker = BatchWorker(
        encoder.embed_token_ids,
        name="gated",
        max_queue_items=10,
        max_queue_wait=1.0,
        min_rate_sample_tokens=1,
    )
    _measured(worker, tokens_per_second=100)
    bulk = worker.submit([[1] * 30] * 9, bulk=True)  # 270 tokens queued: 2.7 s of work
    request = worker.submit([[2] * 30] * 3)  # 9 + 3 > 10 items, 2.7 s > 1 s: both only for bulk
    with pytest.raises(OverloadedError, match="full"):
        worker.submit([[3]] * 2, bulk=True)
    with pytest.raises(OverloadedError, match="busy"):
        worker.submit([[3] * 30] * 4)  # 90 request tokens ahead + 120 > 1 s
    worker.start()
    encoder.embedding.set()
    assert request.result(30).shape == (3, 2) and bulk.result(30).shape == (9, 2)
    worker.stop(5)


def test_a_long_library_call_on_a_served_model_is_bulk_work_and_a_query_is_not(monkeypatch):
    encoder = GatedEncoder()
    pool, worker = _pool(encoder, max_batch_size=4, max_batch_tokens=100)
    lanes: list[bool] = []
    submit = worker.submit
    monkeypatch.setattr(
        worker,
        "submit",
        lambda items, admission=None, *, bulk=False: (
            lanes.append(bulk) or submit(items, admission, bulk=bulk)
        ),
    )
    embedder = pool.embedder("gated")
    embedder.embed(["q" * 10])  # one window's worth or less: a request
    embedder.embed(["d" * 10] * 40)  # more than a window (a padded model's: 8 batches of 4 inputs)
    embedder.embed(["d" * 60] * 2)  # more than a window's 100 tokens
    assert lanes == [False, True, True]
    pool.close(5)
