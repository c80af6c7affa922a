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


def _fake_run(log: list[list[int]]):
    def run(batch):
        log.append([ids[0] for ids in batch])
        return np.array([[ids[0]] for ids in batch], dtype=np.float32)

    return run


def _at_once(run, count: int = 2):
    """``run``, for batches that must run ``count`` at once: each waits (or fails) for the others."""
    barrier = threading.Barrier(count, timeout=5)
    return lambda batch: (barrier.wait(), run(batch))[1]


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
        _at_once(_fake_run(log)),
        max_batch_tokens=40,
        padded_batches=False,
        streams=Streams(2, None),
    ).start()
    # one request of 8 inputs × 10 tokens: two full windows of 4, which must run concurrently
    result = worker.submit([[i] * 10 for i in range(8)]).result(10)
    assert result[:, 0].tolist() == list(range(8))  # reassembled in order from both streams
    assert sorted(log) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    worker.stop(5)


def _wait_until_taken(worker: BatchWorker) -> None:
    deadline = time.monotonic() + 5
    while worker.queue_depth and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_second_stream_waits_for_half_a_batch_while_the_first_runs():
    """Not for whatever arrives (a batch of one text costs more per text), nor for a whole batch
    (its core idles meanwhile): ``START_BESIDE_A_RUNNING_STREAM`` of a window."""
    log: list[list[int]] = []
    worker, gate = _gated_two_stream_worker(log)
    first = worker.submit([[1] * 10] * 4)  # one full window
    time.sleep(0.05)  # stream one is inside its batch
    small = worker.submit([[2] * 9])
    time.sleep(0.2)
    assert worker.queue_depth == 1  # 9 of 40 tokens: the idle stream did not start on them
    more = worker.submit([[3] * 10])
    time.sleep(0.2)
    assert worker.queue_depth == 2  # 19 of 40: still under half a window
    half = worker.submit([[4] * 1])  # now 20 tokens, half a window, wait
    _wait_until_taken(worker)
    assert worker.queue_depth == 0  # taken by the second stream while the first still runs
    gate.set()
    assert first.result(5)[:, 0].tolist() == [1] * 4
    assert small.result(5)[0, 0] == 2 and more.result(5)[0, 0] == 3 and half.result(5)[0, 0] == 4
    assert sorted(sorted(batch) for batch in log) == [[1, 1, 1, 1], [2, 3, 4]]
    worker.stop(5)


@pytest.mark.parametrize(
    ("streams", "lengths", "expected"),
    [
        (2, [10] * 5, [[0, 1], [2, 3, 4]]),  # 50 tokens: 25 each, cut between inputs
        (2, [10] * 7, [[0, 1, 2], [3, 4, 5, 6]]),  # 70 tokens: not a window of 40 and one of 30
        (2, [1] * 6, [[0, 1, 2], [3, 4, 5]]),  # more inputs than a window (4) holds: 3 each
        (3, [10] * 9, [[0, 1, 2], [3, 4, 5], [6, 7, 8]]),  # each share divides what is left
    ],
)
def test_idle_streams_share_a_queue_of_less_than_a_window_each(streams, lengths, expected):
    log: list[list[int]] = []
    worker = BatchWorker(
        _at_once(_fake_run(log), streams),  # the shares must run at once
        max_batch_tokens=40,
        max_batch_size=4,
        padded_batches=False,
        streams=Streams(streams, None),
    ).start()
    result = worker.submit([[i] * length for i, length in enumerate(lengths)]).result(10)
    assert result[:, 0].tolist() == list(range(len(lengths)))
    assert sorted(log) == expected
    worker.stop(5)


def test_a_stream_leaves_a_busy_stream_its_share_of_a_bursts_end(monkeypatch):
    """A stream that finds a window and a half queued while the other runs a full window takes
    half, and the other takes the rest as soon as it is free: the two end together, where a full
    window left the other a short one and then ran alone."""
    log: list[list[int]] = []
    gates = {first: threading.Event() for first in (0, 4, 10)}  # held batches, by first input
    run = _fake_run(log)
    worker = BatchWorker(
        lambda batch: (gates[batch[0][0]].wait(5) if batch[0][0] in gates else None, run(batch))[1],
        max_batch_tokens=40,
        padded_batches=False,
        streams=Streams(2, None),
    ).start()
    first = worker.submit([[i] * 10 for i in range(8)])  # a full window for each stream
    _wait_until_taken(worker)
    second = worker.submit([[10 + i] * 10 for i in range(6)])  # a window and a half
    gates[0].set()  # one stream is free: it takes half, and holds it
    deadline = time.monotonic() + 5
    while worker.queue_depth > 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.queue_depth == 3
    gates[4].set()  # the other is free: it takes the rest at once, though not a full batch
    _wait_until_taken(worker)
    assert worker.queue_depth == 0 and not gates[10].is_set()
    gates[10].set()
    assert first.result(5)[:, 0].tolist() == list(range(8))
    assert second.result(5)[:, 0].tolist() == list(range(10, 16))
    assert sorted(log) == [[0, 1, 2, 3], [4, 5, 6, 7], [10, 11, 12], [13, 14, 15]]
    worker.stop(5)

    # as before: the free stream took a full window, and the last inputs waited for a stream
    monkeypatch.setattr(worker_module, "SHARE_WITH_BUSY_STREAMS", False)
    log.clear()
    for gate in gates.values():
        gate.clear()
    worker.start()
    worker.submit([[i] * 10 for i in range(8)])
    _wait_until_taken(worker)
    later = worker.submit([[10 + i] * 10 for i in range(6)])
    gates[0].set()
    while worker.queue_depth > 2 and time.monotonic() < deadline + 5:
        time.sleep(0.01)
    time.sleep(0.1)
    assert worker.queue_depth == 2  # [14, 15] wait for a full batch or the cores to idle
    gates[4].set()
    gates[10].set()
    later.result(5)
    assert sorted(log) == [[0, 1, 2, 3], [4, 5, 6, 7], [10, 11, 12, 13], [14, 15]]
    worker.stop(5)


def _threads_logging_run(log: list[tuple[int, int]], gate: threading.Event | None = None):
    """A batch function that logs (first input's id, torch threads of the stream running it)."""

    def run(batch):
        if gate is not None:
            gate.wait(5)
        log.append((batch[0][0], torch.get_num_threads()))
        return np.array([[ids[0]] for ids in batch], dtype=np.float32)

    return run


def _one_thread_streams(run, every_core_tokens: int = 0, **settings) -> BatchWorker:
    """A started worker of two streams of one thread each, padding-free batches of 40 tokens."""
    streams = Streams(2, 1, every_core_tokens=every_core_tokens)
    return BatchWorker(run, max_batch_tokens=40, padded_batches=False, streams=streams, **settings).start()


def test_a_lone_window_runs_on_every_core_and_the_other_stream_waits():
    log: list[tuple[int, int]] = []
    gate = threading.Event()
    worker = _one_thread_streams(_threads_logging_run(log, gate))
    lone = worker.submit([[1] * 10])  # nothing else queued, the other stream idle
    time.sleep(0.05)
    full = worker.submit([[2] * 10] * 4)  # a full batch, which would start a second stream
    time.sleep(0.2)
    assert worker.queue_depth == 4  # waits: the lone window has both streams' threads
    gate.set()
    assert lone.result(5)[0, 0] == 1 and full.result(5)[0, 0] == 2
    assert log == [(1, 2), (2, 2)]  # each found the other stream idle and nothing queued
    worker.stop(5)


def test_a_request_right_behind_a_lone_one_joins_it_within_the_wait_its_rate_allows(monkeypatch):
    monkeypatch.setattr(worker_module, "EVERY_CORE_WAIT_MAX_SECONDS", 0.5)
    log: list[tuple[int, int]] = []
    worker = _one_thread_streams(_threads_logging_run(log))  # (its batches take microseconds)
    first = worker.submit([[1] * 10])
    time.sleep(0.05)
    second = worker.submit([[2] * 10])
    assert first.result(5)[0, 0] == 1 and second.result(5)[0, 0] == 2
    # nothing measured yet: the first waited up to the maximum, the second joined it, and the two
    # ran as one batch on both streams' threads
    assert log == [(1, 2)]
    # one batch measured, of far fewer tokens than admission needs: the wait is 2 % of microseconds
    third = worker.submit([[3] * 10])
    time.sleep(0.05)
    fourth = worker.submit([[4] * 10])
    assert third.result(5)[0, 0] == 3 and fourth.result(5)[0, 0] == 4
    assert log[1:] == [(3, 2), (4, 2)]
    worker.stop(5)


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        # 30 tokens, not a full batch for the idle stream: the window takes them in, is then
        # exactly full, stops waiting and runs alone
        ([10, 10, 10], [(1, 2)]),
        # 39 tokens: with the first's 10, more than a window, so the two streams share them, each
        # on its own thread, at once
        ([10, 10, 10, 9], [(1, 1), (2, 1)]),
    ],
)
def test_a_window_filled_while_gathering_stops_waiting(monkeypatch, second, expected):
    monkeypatch.setattr(worker_module, "EVERY_CORE_WAIT_MAX_SECONDS", 0.5)
    monkeypatch.setattr(worker_module, "EVERY_CORE_WAIT_SHARE", 1.0)
    log: list[tuple[int, int]] = []
    run = _threads_logging_run(log)
    worker = _one_thread_streams(run if len(expected) == 1 else _at_once(run))  # (40-token batches)
    started = time.monotonic()
    first = worker.submit([[1] * 10])
    time.sleep(0.05)
    rest = worker.submit([[2] * length for length in second])
    assert first.result(5)[0, 0] == 1
    assert time.monotonic() - started < 0.4  # full: it stopped waiting before its 0.5 s
    assert rest.result(5)[:, 0].tolist() == [2] * len(second)
    assert sorted(log) == expected
    worker.stop(5)


def test_a_lone_window_too_small_to_gain_keeps_one_streams_threads():
    log: list[tuple[int, int]] = []
    worker = _one_thread_streams(_threads_logging_run(log), every_core_tokens=20)
    worker.submit([[1] * 10]).result(5)
    worker.submit([[2] * 10] * 2).result(5)
    assert log == [(1, 1), (2, 2)]
    worker.stop(5)


def test_the_smallest_window_on_every_core_follows_the_models_linear_work(monkeypatch):
    monkeypatch.setattr(streams_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    model = _Model("cpu")
    assert Streams.for_model(model) == Streams(2, 1)  # not a torch model: never on every core
    model.model = torch.nn.Sequential(torch.nn.Embedding(1000, 100), torch.nn.Linear(100, 400))
    flops_per_token = 2 * 100 * 400  # the embedding table is a lookup, not work per token
    expected = -(-int(streams_module.EVERY_CORE_MIN_FLOPS) // flops_per_token)
    assert Streams.for_model(model) == Streams(2, 1, every_core_tokens=expected)


def test_windows_under_load_keep_one_streams_threads():
    log: list[tuple[int, int]] = []
    worker = _one_thread_streams(_at_once(_threads_logging_run(log)))
    assert worker.submit([[i] * 10 for i in range(8)]).result(5)[:, 0].tolist() == list(range(8))
    assert sorted(log) == [(0, 1), (4, 1)]
    worker.stop(5)


def test_a_lone_windows_rate_counts_every_core_it_took():
    def slow(batch):
        time.sleep(0.1)
        return np.zeros((len(batch), 1), dtype=np.float32)

    worker = _one_thread_streams(slow, min_rate_sample_tokens=1)
    worker.submit([[1] * 10]).result(5)
    # 10 tokens in ≥ 0.1 s on both streams' cores: at most 100 tokens/s, not twice that
    assert 0 < worker.tokens_per_second <= 100
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


def test_every_core_changes_nothing_in_the_vectors_and_gives_the_threads_back(minilm_dir):
    embedder = Embedder.load("minilm", device="cpu", streams=1)  # mixed bf16 where the CPU has it
    ids = embedder.tokenize([f"sentence number {i} " + "with more words " * (i % 7) for i in range(40)])
    streams = Streams(2, 1)
    seen: dict[str, object] = {}

    def in_a_stream() -> None:
        streams.enter()
        seen["narrow"] = embedder.encoder.embed_token_ids(ids)
        with streams.every_core():
            seen["threads inside"] = torch.get_num_threads()
            seen["wide"] = embedder.encoder.embed_token_ids(ids)
        seen["threads after"] = torch.get_num_threads()

    thread = threading.Thread(target=in_a_stream)
    thread.start()
    thread.join(60)
    assert (seen["threads inside"], seen["threads after"]) == (2, 1)
    cosines = np.sum(seen["narrow"] * seen["wide"], axis=1)
    assert cosines.min() > 0.99999


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
