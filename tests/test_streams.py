"""Two forward passes at once on a CPU: who gets how many, and a worker whose streams stay correct."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from qwembed.engine import BatchWorker, Embedder
from qwembed.engine import streams as streams_module
from qwembed.engine import worker as worker_module
from qwembed.engine.streams import Streams


class _Model:
    def __init__(self, device: str, compiled: bool = False):
        self.device = torch.device(device)
        self.compiled = compiled


def test_two_streams_on_a_multicore_cpu_share_its_threads(monkeypatch):
    monkeypatch.setattr(streams_module, "usable_cores", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert Streams.for_model(_Model("cpu")) == Streams(2, 4)
    assert Streams.for_model(_Model("cpu"), 4) == Streams(4, 2)
    assert Streams.for_model(_Model("cpu"), 1) == Streams(1, None)  # one stream: torch's own setting
    assert Streams.for_model(_Model("cuda")) == Streams(1, None)
    assert Streams.for_model(_Model("cpu", compiled=True)) == Streams(1, None)
    monkeypatch.setattr(streams_module, "usable_cores", lambda: 1)
    assert Streams.for_model(_Model("cpu")) == Streams(1, None)
    with pytest.raises(ValueError):
        Streams.for_model(_Model("cpu"), 0)


def _fake_run(log: list[list[int]], barrier: threading.Barrier | None = None):
    def run(batch):
        if barrier is not None:
            barrier.wait()  # raises (failing the batch) unless the other stream runs at the same time
        log.append([ids[0] for ids in batch])
        return np.array([[ids[0]] for ids in batch], dtype=np.float32)

    return run


def _gated_two_stream_worker(log: list[list[int]]) -> tuple[BatchWorker, threading.Event]:
    """Two streams, batches of 40 tokens, each batch held until the gate opens."""
    gate = threading.Event()
    run = _fake_run(log)
    worker = BatchWorker(
        lambda batch: (gate.wait(), run(batch))[1],
        max_batch_tokens=40,
        padded_batches=False,
        streams=Streams(2, None),
    ).start()
    return worker, gate


def test_two_streams_run_two_full_batches_at_once():
    log: list[list[int]] = []
    worker = BatchWorker(
        _fake_run(log, threading.Barrier(2, timeout=5)),
        max_batch_tokens=40,
        padded_batches=False,
        streams=Streams(2, None),
    ).start()
    # one request of 8 inputs × 10 tokens: two full windows of 4, which must run concurrently
    result = worker.submit([[i] * 10 for i in range(8)]).result(10)
    assert result[:, 0].tolist() == list(range(8))  # reassembled in order from both streams
    assert sorted(log) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    worker.stop(5)


def test_a_second_stream_waits_for_a_full_batch_while_the_first_runs():
    log: list[list[int]] = []
    worker, gate = _gated_two_stream_worker(log)
    first = worker.submit([[1] * 10])
    time.sleep(0.05)  # stream one is inside its batch
    small = [worker.submit([[k] * 10]) for k in (2, 3)]
    time.sleep(0.2)
    assert worker.queue_depth == 2  # 20 of 40 tokens: the idle stream did not start on them
    filler = worker.submit([[4] * 10, [5] * 10])  # now a full batch waits
    deadline = time.monotonic() + 5
    while worker.queue_depth and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.queue_depth == 0  # taken by the second stream while the first still runs
    gate.set()
    assert [f.result(5)[0, 0] for f in (first, *small)] == [1, 2, 3]
    assert filler.result(5)[:, 0].tolist() == [4, 5]
    assert sorted(log) == [[1], [2, 3, 4, 5]]
    worker.stop(5)


def test_an_idle_worker_gives_memory_back_but_not_between_windows(monkeypatch):
    releases: list[float] = []
    monkeypatch.setattr(worker_module, "release_free_memory", lambda: releases.append(time.monotonic()))
    monkeypatch.setattr(worker_module, "MEMORY_RELEASE_IDLE_SECONDS", 1.0)
    worker = BatchWorker(_fake_run([]), max_batch_tokens=40, padded_batches=False).start()
    worker.submit([[1] * 10] * 12).result(5)  # three windows back to back
    time.sleep(0.2)
    assert releases == []  # not the moment the queue ran empty: more requests may be on their way
    time.sleep(1.5)
    assert len(releases) == 1  # once idle for a second, and not again while still idle
    worker.stop(5)


def test_embedder_streams_change_nothing_in_the_vectors(minilm_dir):
    texts = [f"sentence number {i} " + "with more words " * (i % 7) for i in range(300)]
    one = Embedder.load("minilm", device="cpu", dtype="float32", streams=1, max_batch_size=32)
    two = Embedder(one.encoder, max_batch_size=32, streams=2)
    assert two.streams.streams.count == 2
    np.testing.assert_allclose(two.embed(texts), one.embed(texts), atol=1e-6)


def test_a_window_of_cancelled_inputs_leaves_the_streams_free():
    worker, gate = _gated_two_stream_worker([])
    first = worker.submit([[1] * 10])
    time.sleep(0.05)
    worker.submit([[2] * 10]).cancel()  # the client went away while it waited
    gate.set()
    first.result(5)
    time.sleep(0.05)  # a stream has taken the cancelled input: an empty window
    assert worker.submit([[3] * 10]).result(5)[0, 0] == 3  # a stream still starts on a lone request
    worker.stop(5)
