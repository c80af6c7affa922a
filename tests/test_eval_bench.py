"""Bench: latency rows per batch size, token counts, and the command's output."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest

from qwembed.eval.bench import measure_latency, parse_batch_sizes, run_bench
from qwembed.eval.cli import main
from qwembed.eval.errors import EvalError
from qwembed.eval.hashing_embedder import HashingEmbedder


class CountingEmbedder(HashingEmbedder):
    """Reports one token per character, as a local Embedder's tokenize would report ids."""

    def tokenize(self, texts):
        return [list(t) for t in texts]


def test_latency_rows():
    rows = measure_latency(CountingEmbedder(16), ["ab", "cde"], [1, 4], repeats=3)
    assert [r["batch_size"] for r in rows] == [1, 4] and all(r["calls"] == 3 for r in rows)
    r = rows[1]
    assert r["latency_ms_p50"] <= r["latency_ms_p95"] and r["texts_per_s"] > 0
    # batch 4 from ["ab", "cde"] cycled: 2+3+2+3 = 10 tokens per call
    assert r["tokens_per_s"] == pytest.approx(10 * r["texts_per_s"] / 4)
    assert measure_latency(HashingEmbedder(16), ["x"], [2], repeats=2)[0]["tokens_per_s"] is None


def test_a_text_over_the_model_limit_is_timed_and_counted_as_cut(minilm_dir):
    """The timed calls cut an over-long text; the token count once did not, and failed the run."""
    from qwembed.engine import Embedder

    embedder = Embedder.load("minilm", device="cpu", dtype="float32")
    (row,) = measure_latency(embedder, ["embedding " * 600], [1], repeats=2)
    assert row["tokens_per_s"] == pytest.approx(embedder.max_tokens * row["texts_per_s"])


class MeetingEmbedder(CountingEmbedder):
    """Each timed call waits at a barrier for ``parties`` calls in flight: it returns only if
    that many callers really run at once (the first, warm-up call passes alone)."""

    def __init__(self, parties: int, timeout: float = 10):
        super().__init__(16)
        self.barrier = threading.Barrier(parties, timeout=timeout)
        self.calls = 0

    def embed(self, texts, **kwargs):
        self.calls += 1
        if self.calls > 1:
            self.barrier.wait()
        return super().embed(texts, **kwargs)


def test_concurrent_callers_share_the_calls():
    model = MeetingEmbedder(4)
    (row,) = measure_latency(model, ["ab", "cde"], [4], repeats=8, concurrency=4)
    assert row["concurrency"] == 4 and row["calls"] == 8 and model.calls == 9
    assert row["tokens_per_s"] == pytest.approx(10 * row["texts_per_s"] / 4)
    with pytest.raises(threading.BrokenBarrierError):  # one caller alone never meets the others
        measure_latency(MeetingEmbedder(2, timeout=0.5), ["ab"], [1], repeats=2, concurrency=1)
    with pytest.raises(EvalError):
        measure_latency(model, ["ab"], [1], concurrency=0)


def test_parse_and_record():
    assert parse_batch_sizes("1, 8,32") == [1, 8, 32]
    with pytest.raises(EvalError):
        parse_batch_sizes("1,0")
    rec = run_bench(
        "hashing:16", ["一二三", "四五"], "t", {"path": "t", "sha256": "0", "texts": 2}, [1, 2], repeats=2
    )
    assert rec.task == "bench" and rec.timing["load_s"] >= 0 and len(rec.details["rows"]) == 2


def test_bench_command(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = [
        "bench",
        "--quiet",
        "--model",
        "hashing",
        "--batch-sizes",
        "1,4",
        "--repeats",
        "2",
        "--concurrency",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    record = json.loads(out.read_text(encoding="utf-8"))["records"][0]
    assert record["dataset"] == "builtin:zh-hard" and record["data"]["texts"] == 225
    assert record["config"]["concurrency"] == 2
    assert all(row["concurrency"] == 2 and row["calls"] == 2 for row in record["details"]["rows"])
    assert "Speed and memory" in capsys.readouterr().out
    assert main(["bench", "--model", "hashing", "--batch-sizes", "x", "--out", str(out)]) == 2


def test_st_peer_is_sentence_transformers_on_the_same_model(minilm_dir):
    from qwembed.engine import Embedder
    from qwembed.eval.models import open_embedder

    peer = open_embedder("st:minilm", device="cpu")
    texts = ["a peer for speed comparisons", "银行卡"]
    assert peer.name == "st:minilm" and peer.dimension == 384
    embedder = Embedder.load("minilm", device="cpu", dtype="float32")
    np.testing.assert_allclose(peer.embed(texts), embedder.embed(texts), atol=1e-5)
    assert peer.compute == embedder.compute == "float32 on cpu"  # (recorded with each result)
    assert peer.embed(texts, dimensions=64).shape == (2, 64)


def test_st_peer_of_a_plain_qwen3_folder_uses_the_official_recipe(qwen3_dirs, caplog):
    """A Qwen3 folder without ``modules.json`` would be mean-pooled inside a chat template by
    sentence-transformers 6; the peer sets it up as the official ST config does, and sends an
    instruction in the official query form, so it measures what qwembed computes."""
    from qwembed.engine import Embedder
    from qwembed.eval.st_peer import SentenceTransformersPeer

    folder = str(qwen3_dirs["appends"])
    with caplog.at_level(logging.WARNING, logger="qwembed.eval.st_peer"):
        peer = SentenceTransformersPeer(folder, device="cpu")
    assert "no sentence-transformers config" in caplog.text and "does not append" not in caplog.text
    embedder = Embedder.load(folder, device="cpu", dtype="float32")
    texts = ["What is the capital of China?", "中国的首都是北京。"]
    for options in ({}, {"input_type": "query"}, {"input_type": "query", "instruction": "Find FAQ answers"}):
        np.testing.assert_allclose(peer.embed(texts, **options), embedder.embed(texts, **options), atol=1e-5)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qwembed.eval.st_peer"):
        SentenceTransformersPeer(str(qwen3_dirs["plain"]), device="cpu")
    assert "does not append <|endoftext|>" in caplog.text


def test_a_benchmarking_child_that_dies_is_an_error_not_a_wait():
    """A child killed for memory never answers: the parent notices it ended instead of waiting."""
    import multiprocessing
    import os

    from qwembed.eval import bench

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=os._exit, args=(3,))
    proc.start()
    with pytest.raises(EvalError, match=r"ended without a result \(exit code 3\)"):
        bench._answer(queue, proc, "some-model")
    proc.join()


def test_bench_failures_are_one_line_and_keep_the_earlier_results(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", "--quiet", "--batch-sizes", "1", "--repeats", "1", "--out", str(out)]
    code = main([*argv, "--model", "hashing", "--model", "http://127.0.0.1:9/v1#x"])  # (port 9: discard)
    err = capsys.readouterr().err
    assert code == 1 and "qwembed bench: endpoint error:" in err and "Traceback" not in err
    assert [r["model"] for r in json.loads(out.read_text(encoding="utf-8"))["records"]] == ["hashing"]
