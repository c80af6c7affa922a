"""Batching: plans within budget, identical results whatever the batch, a worker that survives."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from fake_encoders import SlowEncoder
from qwembed.engine import BatchWorker, Embedder, OverloadedError
from qwembed.engine.batching import default_batch_size, default_batch_tokens, plan_batches
from qwembed.engine.pool import BatchSettings, ModelPool
from qwembed.engine.postprocess import InvalidDimensionsError, check_dimensions, truncate_dimensions


def test_plan_batches_respects_token_budget_and_size():
    lengths = [5, 100, 7, 60, 3, 3, 90, 10]
    batches = plan_batches(lengths, max_batch_tokens=200, max_batch_size=3)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 200
    # longest first, so neighbours in a batch have similar lengths
    assert batches[0][0] == 1


def test_an_input_over_the_budget_runs_alone():
    assert plan_batches([1000, 2, 2], max_batch_tokens=100, max_batch_size=8) == [[0], [1, 2]]


def _stream_finish(batches: list[list[int]], lengths: list[int], streams: int) -> int:
    """Tokens on the busiest of ``streams`` that each take the next batch when free."""
    load = [0] * streams
    for batch in batches:
        load[load.index(min(load))] += sum(lengths[i] for i in batch)
    return max(load)


def test_a_short_plan_is_cut_so_that_the_streams_finish_together():
    # 256 short texts: filling each batch to the budget gave rows 0-127 (longer) and 128-255
    lengths = [14] * 64 + [9] * 64 + [6] * 128
    greedy = plan_batches(lengths, 2048, 128, padded=False)
    assert [len(b) for b in greedy] == [128, 128]
    balanced = plan_batches(lengths, 2048, 128, padded=False, streams=2)
    assert sorted(i for batch in balanced for i in batch) == list(range(len(lengths)))
    for batch in balanced:
        assert len(batch) <= 128 and sum(lengths[i] for i in batch) <= 2048
        assert batch == sorted(batch, key=lambda i: -lengths[i])  # still longest first
    assert _stream_finish(greedy, lengths, 2) == 64 * 14 + 64 * 9
    assert _stream_finish(balanced, lengths, 2) <= 0.55 * sum(lengths)


def test_one_stream_or_a_long_plan_keeps_full_batches():
    lengths = [14] * 64 + [9] * 64 + [6] * 128
    one = plan_batches(lengths, 2048, 128, padded=False)
    assert plan_batches(lengths, 2048, 128, padded=False, streams=1) == one
    assert plan_batches(lengths[:100], 2048, 128, padded=False, streams=2) == [list(range(100))]
    many = [20] * 5000  # 50 batches: the last round's unevenness is at most one batch of 50
    full = plan_batches(many, 2048, 128, padded=False)
    assert len(full) == 50 and plan_batches(many, 2048, 128, padded=False, streams=2) == full


class _OnDevice:
    """What the batching defaults read of an encoder: its device."""

    def __init__(self, device: str):
        self.device = torch.device(device)


def test_batch_defaults_follow_the_device():
    cpu, gpu = _OnDevice("cpu"), _OnDevice("cuda:0")
    assert (default_batch_tokens(cpu), default_batch_size(cpu)) == (2048, 128)
    # a GPU gets more tokens, and more rows: short texts ran out of rows first at 128 (H100)
    assert (default_batch_tokens(gpu), default_batch_size(gpu)) == (16384, 1024)


@pytest.mark.parametrize("device, rows", [("cpu", 128), ("cuda", 1024)])
def test_embedder_and_server_take_the_devices_defaults_unless_told(device, rows):
    encoder = SlowEncoder(delay=0)
    encoder.device = torch.device(device)  # only read, never used: no GPU is needed
    assert Embedder(encoder).max_batch_size == rows
    assert Embedder(encoder, max_batch_size=7).max_batch_size == 7
    pool = ModelPool(BatchSettings())
    pool.add_encoder(encoder)
    assert pool._models[encoder.name].worker.max_batch_size == rows
    told = ModelPool(BatchSettings(max_batch_size=7))
    told.add_encoder(encoder)
    assert told._models[encoder.name].worker.max_batch_size == 7


@pytest.mark.parametrize(
    "setting",
    [
        {"max_batch_size": -5},
        {"max_batch_size": 0},
        {"max_batch_tokens": 0},
        {"streams": 0},
        {"max_queue_wait": -1},
    ],
)
def test_batch_settings_that_could_never_fill_a_batch_are_refused(setting):
    """A negative batch size once left a server spinning at startup, deaf to SIGTERM."""
    name = next(iter(setting))
    with pytest.raises(ValueError, match=name):
        BatchSettings(**setting)


@pytest.mark.parametrize(
    "option",
    [
        ["--max-batch-size", "-5"],
        ["--max-batch-size", "0"],
        ["--port", "99999"],
        ["--port", "x"],
        ["--streams", "0"],
        ["--body-timeout", "0"],
        ["--max-queue-wait", "nan"],
        ["--min-bf16-cosine", "2"],
    ],
)
def test_serve_refuses_numeric_options_out_of_range_before_loading_anything(option, capsys):
    from qwembed.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--model", "minilm", *option])
    assert exited.value.code == 2
    assert f"argument {option[0]}" in capsys.readouterr().err


def test_truncate_dimensions_renormalises():
    vectors = np.array([[3.0, 4.0, 12.0]], dtype=np.float32) / 13
    np.testing.assert_allclose(truncate_dimensions(vectors, 2), [[0.6, 0.8]], atol=1e-6)
    assert truncate_dimensions(vectors, None) is vectors


@pytest.mark.parametrize("bad", [0, -1, 4, 2.0, True, "2"])
def test_check_dimensions_rejects(bad):
    with pytest.raises(InvalidDimensionsError):
        check_dimensions(bad, 3)


@pytest.mark.parametrize("bad", [2.0, True, "2", np.float32(2)])
def test_dimensions_of_a_wrong_type_are_a_type_error(bad):
    with pytest.raises(TypeError, match="dimensions must be an integer"):
        check_dimensions(bad, 3)


@pytest.mark.parametrize("bad", [0, 4])
def test_dimensions_out_of_range_are_a_value_error_only(bad):
    with pytest.raises(InvalidDimensionsError) as raised:
        check_dimensions(bad, 3)
    assert not isinstance(raised.value, TypeError)


@pytest.fixture(scope="module")
def qwen3(qwen3_dirs) -> Embedder:
    return Embedder.load(str(qwen3_dirs["plain"]), device="cpu", dtype="float32")


def test_vector_alone_equals_vector_in_a_batch_of_longer_texts(qwen3):
    text = "短文本 short"
    longer = ["a considerably longer text that forces left padding of the short one " * k for k in (1, 3, 6)]
    alone = qwen3.embed([text])
    mixed = qwen3.embed([longer[2], text, longer[0], longer[1]])
    np.testing.assert_allclose(mixed[1:2], alone, atol=1e-5)
    # and with tiny batches, where every text runs on its own
    small = Embedder(qwen3.encoder, max_batch_size=1).embed([longer[2], text])
    np.testing.assert_allclose(small, mixed[:2], atol=1e-5)


def _worker(run, **kwargs) -> BatchWorker:
    return BatchWorker(run, **kwargs).start()


def test_worker_merges_concurrent_requests_into_batches():
    seen: list[int] = []

    def run(batch):
        seen.append(len(batch))
        return np.array([[len(ids)] for ids in batch], dtype=np.float32)

    gate = threading.Event()
    worker = _worker(lambda b: (gate.wait(), run(b))[1], max_batch_size=64)
    first = worker.submit([[1]])
    time.sleep(0.05)  # the worker is now blocked on the first batch, the rest queue up
    futures = [worker.submit([[1] * (i + 1)]) for i in range(10)]
    gate.set()
    assert first.result(5)[0, 0] == 1
    assert [f.result(5)[0, 0] for f in futures] == [i + 1 for i in range(10)]
    assert seen == [1, 10]
    worker.stop(5)


def test_padding_free_worker_cuts_full_batches_across_requests():
    """A padding-free model's window is one full batch, even when that splits a request; every
    input still comes back to its own request, in order."""
    seen: list[list[int]] = []
    gate = threading.Event()

    def run(batch):
        gate.wait()
        seen.append([ids[0] for ids in batch])
        return np.array([[ids[0]] for ids in batch], dtype=np.float32)

    worker = _worker(run, max_batch_tokens=40, max_batch_size=64, padded_batches=False)
    blocker = worker.submit([[0] * 10])
    time.sleep(0.05)
    # 3 requests × 3 inputs × 10 tokens
    requests = [[[10 * r + i] * 10 for i in range(3)] for r in range(1, 4)]
    futures = [worker.submit(items) for items in requests]
    gate.set()
    for r, future in enumerate(futures, start=1):
        assert future.result(5)[:, 0].tolist() == [10 * r, 10 * r + 1, 10 * r + 2]
    blocker.result(5)
    assert seen[1:] == [[10, 11, 12, 20], [21, 22, 30, 31], [32]]
    worker.stop(5)


def test_padded_worker_keeps_requests_whole():
    seen: list[int] = []
    gate = threading.Event()

    def run(batch):
        gate.wait()
        seen.append(len(batch))
        return np.zeros((len(batch), 1), dtype=np.float32)

    worker = _worker(run, max_batch_tokens=40, max_batch_size=64, padded_batches=True)
    blocker = worker.submit([[0] * 10])
    time.sleep(0.05)
    futures = [worker.submit([[1] * 10] * 3) for _ in range(3)]
    gate.set()
    for future in futures:
        assert future.result(5).shape == (3, 1)
    blocker.result(5)
    # windows of whole requests (6 inputs, then 3), each cut into batches of at most 40 padded tokens
    assert seen[1:] == [4, 2, 3]
    worker.stop(5)


def test_cancelled_request_is_skipped():
    ran: list[list[int]] = []
    gate = threading.Event()

    def run(batch):
        gate.wait()
        ran.extend(batch)
        return np.zeros((len(batch), 1), dtype=np.float32)

    worker = _worker(run)
    blocker = worker.submit([[0]])
    time.sleep(0.05)
    gone = worker.submit([[7, 7, 7]])
    gone.cancel()  # what the route does when the client disconnects
    kept = worker.submit([[1]])
    gate.set()
    kept.result(5)
    blocker.result(5)
    assert [7, 7, 7] not in ran
    worker.stop(5)


def test_a_poisonous_input_fails_only_its_own_request():
    gate = threading.Event()

    def run(batch):
        gate.wait()
        if any(ids == [666] for ids in batch):
            raise RuntimeError("kernel exploded")
        return np.ones((len(batch), 1), dtype=np.float32)

    worker = _worker(run)
    blocker = worker.submit([[1]])
    time.sleep(0.05)
    bad = worker.submit([[666], [2]])
    good = worker.submit([[3]])
    gate.set()
    assert good.result(5).shape == (1, 1)
    with pytest.raises(RuntimeError, match="exploded"):
        bad.result(5)
    blocker.result(5)
    assert worker.submit([[4]]).result(5).shape == (1, 1)  # still serving
    worker.stop(5)


def test_bounded_queue_refuses_at_once():
    gate = threading.Event()
    worker = _worker(lambda b: (gate.wait(), np.zeros((len(b), 1), np.float32))[1], max_queue_items=3)
    worker.submit([[1]])
    time.sleep(0.05)
    worker.submit([[1], [2], [3]])
    with pytest.raises(OverloadedError):
        worker.submit([[4]])
    gate.set()
    worker.stop(5)


def test_admission_by_estimated_wait():
    """Once throughput is known, work that would wait longer than max_queue_wait is refused."""
    gate = threading.Event()

    def run(batch):
        gate.wait()
        time.sleep(0.05)
        return np.zeros((len(batch), 1), np.float32)

    worker = _worker(run, max_queue_wait=0.5, max_batch_size=4, min_rate_sample_tokens=400)
    gate.set()
    worker.submit([[1] * 100] * 2).result(5)
    assert worker.tokens_per_second is None  # 200 tokens are too few to judge throughput by
    worker.submit([[1] * 100] * 4).result(5)  # now 600 tokens: ~6,000 tokens/s
    gate.clear()
    worker.submit([[1] * 100] * 4)  # occupies the worker
    time.sleep(0.05)
    worker.submit([[1] * 100] * 8)  # queued: ~0.1 s
    with pytest.raises(OverloadedError) as refused:
        worker.submit([[1] * 100] * 64)  # would wait ~0.9 s
    assert refused.value.retry_after > 0.5
    gate.set()
    time.sleep(0.3)
    assert worker.submit([[1] * 100] * 4).result(5).shape == (4, 1)  # drained: accepted again
    assert worker.estimated_wait() == 0.0
    worker.stop(5)
