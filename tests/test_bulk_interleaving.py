"""Library work on a served model's worker (the knowledge base's ingestion, through
``ModelPool.embedder``) is bulk work: a request that arrives during a long ingestion waits for the
batch running, not for the whole ingestion."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np

from fake_encoders import SlowEncoder
from qwembed.backends import TokenIds
from qwembed.engine.inputs import EmbedOptions
from qwembed.engine.pool import BatchSettings, ModelPool


class TracingEncoder(SlowEncoder):
    """A vector that says which input it is (its length and first character), so that a result
    put together from slices can be checked row by row. Padding-free, so that a window is one
    batch of 4 (a padded model's window sorts 8 batches)."""

    packed = True

    def __init__(self, delay: float):
        super().__init__(delay)
        self.batches: list[list[TokenIds]] = []

    def embed_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        super().embed_token_ids(batch)
        self.batches.append(list(batch))  # (when it finishes)
        return np.array([[len(ids), ids[0], ids[-1], 1.0] for ids in batch], dtype=np.float32)


def test_a_request_during_a_long_library_call_waits_behind_a_slice_not_the_whole_call():
    encoder = TracingEncoder(delay=0.1)  # (a batch far longer than tokenising the query)
    pool = ModelPool(BatchSettings(max_batch_tokens=100, max_batch_size=4, streams=1, max_queue_wait=None))
    pool.add_encoder(encoder)
    pool.start()
    try:
        bulk = [chr(0x4E00 + i) + "x" * (10 + i % 7) for i in range(48)]  # 12 windows of 4
        embedder = pool.embedder("slow")
        result: list[np.ndarray] = []
        worker = threading.Thread(target=lambda: result.append(embedder.embed(bulk)))
        worker.start()
        deadline = time.monotonic() + 30
        while len(encoder.seen) < 4 and time.monotonic() < deadline:  # the bulk's first window ran
            time.sleep(0.005)
        before = len(encoder.batches)
        asyncio.run(pool.embed("slow", ["a query"], EmbedOptions()))
        query = [ord(c) for c in "a query"]
        ahead = next(i for i, batch in enumerate(encoder.batches) if query in batch) - before
        worker.join(30)
        # the batch running when it arrived went first, at most (of 12; before bulk work had a lane
        # of its own, all of them: 11 batches after the snapshot)
        assert ahead <= 1, ahead
        (vectors,) = result
        expected = [[len(text), ord(text[0]), ord(text[-1]), 1.0] for text in bulk]
        np.testing.assert_array_equal(vectors, np.array(expected, dtype=np.float32))
    finally:
        pool.close()
