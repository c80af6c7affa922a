"""Shared prefixes on the Qwen3-0.6B shape: instructed queries and reranking, with and without.

    .venv/bin/python bench/bench_shared_prefixes.py --n 256 --pairs 30 --repeats 3

The packed Qwen3 forward runs the leading tokens a batch's sequences have in common once
(``backends/shared_prefixes.py``). This runs, in turn, in one process:

* queries: BQ sentences with the model card's default instruction (``input_type="query"``):
  sentence-transformers (last-token pooling, left padding, the instruction as its ``prompt``; the
  peer), qwembed, and qwembed with sharing switched off;
* documents: the same sentences without an instruction, qwembed with and without sharing — where
  little is shared, what finding that out costs;
* served queries: the server's engine in this process (bench_embed.py's ``InProcessPool``, with no
  limit on queued work), 8 clients posting 32 of the queries at a time, with and without sharing
  and the prefix cache, against sentence-transformers one request after another;
* lone queries: ``--lone`` of them embedded one call each, as a search box does — qwembed (its
  instruction read from the prefix cache, ``prefix_cache.py``), qwembed without the cache, and
  sentence-transformers one query per ``encode``;
* reranking: a random Qwen3-Reranker-0.6B-shaped causal LM (the same 28 layers and an untied LM
  head) scoring one query against ``--pairs`` candidates (bench_rerank.py's list) — qwembed with
  and without sharing, and the model card's recipe one pair at a time (``logits_to_keep=1``); and
  the same pairs in requests of 3, with and without the prefix cache.

Precision is ``--dtype auto``'s for qwembed (mixed bf16 where the CPU and the load-time check allow
it); the references run float32.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the checkpoint builders the tests use
from common import (  # noqa: E402
    DEFAULT_DATA,
    compare_engines,
    emit,
    load_sentences,
    lone_text_rows,
    machine,
    per_round_ratios,
    scratch_dir,
    timed_in_turn,
)

QUERY = "How do I repay my credit card?"


@contextlib.contextmanager
def no_sharing() -> Iterator[None]:
    """Every batch in the plain packed layout, as before shared prefixes."""
    from qwembed.backends import shared_prefixes

    saved = shared_prefixes.MIN_SAVING
    shared_prefixes.MIN_SAVING = float("inf")
    try:
        yield
    finally:
        shared_prefixes.MIN_SAVING = saved


def unshared(call):
    def run():
        with no_sharing():
            return call()

    return run


def uncached(encoder, call):
    """``call`` with ``encoder``'s prefix cache out of use (sharing within a batch stays)."""

    def run():
        cache, encoder.prefix_cache = encoder.prefix_cache, None
        try:
            return call()
        finally:
            encoder.prefix_cache = cache

    return run


def embedder_rows(texts: list[str], repeats: int, lone: int) -> dict:
    from bench_qwen3_cpu import random_qwen3_0_6b
    from qwembed.backends.qwen3 import query_prompt
    from qwembed.engine import Embedder
    from qwembed.eval.st_peer import qwen3_sentence_transformer

    folder = random_qwen3_0_6b()
    ours = Embedder.load(str(folder), device="cpu")
    reference = qwen3_sentence_transformer(folder)
    instruction = query_prompt(ours.encoder.default_task, "")
    rows: dict = {"precision": ours.encoder.precision.describe()}
    for kind in ("query", "document"):
        tokens = [len(ids) for ids in ours.tokenize(texts, input_type=kind)]
        calls = {}
        if kind == "query":
            calls["sentence-transformers"] = lambda: reference.encode(
                texts, batch_size=32, prompt=instruction
            )
        shared = lambda kind=kind: ours.embed(texts, input_type=kind)  # noqa: E731
        calls["qwembed"] = shared
        calls["qwembed, no sharing"] = unshared(shared)
        times, vectors = timed_in_turn(calls, repeats)
        label = f"{len(texts)} BQ sentences as {kind} inputs, {statistics.mean(tokens):.1f} tokens/text"
        rows[label] = compare_engines(
            times,
            vectors,
            reference="sentence-transformers" if kind == "query" else "qwembed, no sharing",
            texts=len(texts),
            tokens=sum(tokens),
        )
        print(label, {name: row["texts_per_s"] for name, row in rows[label].items()}, flush=True)
    rows.update(served_query_rows(ours.encoder, reference, texts, instruction, repeats))
    if lone:
        rows.update(lone_query_rows(ours, reference, texts[:lone], instruction, repeats))
    return rows


def lone_query_rows(ours, reference, texts: list[str], instruction: str, repeats: int) -> dict:
    """Each query in a call of its own: per-query latency, the instruction's share at its largest."""
    variants = {"qwembed, no prefix cache": lambda call: uncached(ours.encoder, call)}
    rows = lone_text_rows(
        ours,
        reference,
        texts,
        repeats,
        variants=variants,
        input_type="query",
        prompt=instruction,
        unit="query",
    )
    label = f"lone queries: {len(texts)} of them, one call each"
    print(label, {name: row["ms_per_query"] for name, row in rows.items()}, flush=True)
    return {label: rows}


def served_query_rows(encoder, reference, texts: list[str], instruction: str, repeats: int) -> dict:
    from bench_embed import InProcessPool

    pool = InProcessPool(encoder)
    # without sharing, 256 queued queries of the 0.6B shape are more than the server's 5 s of queued
    # work on 2 cores, and it would turn requests away (429): here every request waits its turn
    pool.worker.max_queue_wait = None
    shared_latencies: list[float] = []
    uncached_latencies: list[float] = []
    plain_latencies: list[float] = []
    try:

        def one_by_one() -> None:
            for start in range(0, len(texts), 32):
                reference.encode(texts[start : start + 32], prompt=instruction)

        calls = {
            "sentence-transformers, one request at a time": one_by_one,
            "qwembed": pool.load(texts, 8, 32, shared_latencies, input_type="query"),
            "qwembed, no prefix cache": uncached(
                encoder, pool.load(texts, 8, 32, uncached_latencies, input_type="query")
            ),
            "qwembed, no sharing": unshared(pool.load(texts, 8, 32, plain_latencies, input_type="query")),
        }
        times, _ = timed_in_turn(calls, repeats)
    finally:
        pool.close()
    reference_seconds = times["sentence-transformers, one request at a time"]
    latencies = {
        "qwembed": shared_latencies,
        "qwembed, no prefix cache": uncached_latencies,
        "qwembed, no sharing": plain_latencies,
    }
    requests = -(-len(texts) // 32)
    rows = {}
    for name, seconds in times.items():
        rows[name] = {
            "texts_per_s": round(len(texts) / statistics.median(seconds), 2),
            **per_round_ratios(reference_seconds, seconds),
        }
        if name in latencies:
            timed = latencies[name][requests:]  # the warm-up's requests left out
            rows[name]["p50_ms"] = round(1000 * float(np.percentile(timed, 50)))
            rows[name]["p99_ms"] = round(1000 * float(np.percentile(timed, 99)))
    label = f"served: 8 clients x 32 of the {len(texts)} queries"
    print(label, {name: row["texts_per_s"] for name, row in rows.items()}, flush=True)
    return {label: rows}


def reranker_rows(folder: Path, pairs: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from bench_rerank import make_documents
    from qwembed.backends.qwen3_reranker import Qwen3Reranker
    from qwembed.engine.rerank import score_pairs
    from rerank_fixtures import build_tiny_qwen3_reranker

    path = build_tiny_qwen3_reranker(
        folder / "qwen3-reranker",
        layers=28,
        hidden=1024,
        heads=16,
        kv_heads=8,
        head_dim=128,
        intermediate=3072,
    )
    documents = make_documents(pairs)
    reranker = Qwen3Reranker.load(str(path), device="cpu")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    no_yes = [reranker.tokenizer.convert_tokens_to_ids(t) for t in ("no", "yes")]
    batch = reranker.tokenize_pairs(QUERY, documents, None)

    def one_at_a_time() -> list[float]:
        scores = []
        with torch.inference_mode():
            for ids in batch:
                logits = model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[:, -1, no_yes]
                scores.append(torch.softmax(logits, dim=-1)[0, 1].item())
        return scores

    shared = lambda: score_pairs(reranker, QUERY, documents)  # noqa: E731
    calls = {"model card recipe, one pair at a time": one_at_a_time, "qwembed": shared}
    calls["qwembed, no sharing"] = unshared(shared)

    def in_threes() -> np.ndarray:
        requests = [documents[start : start + 3] for start in range(0, len(documents), 3)]
        return np.concatenate([score_pairs(reranker, QUERY, request) for request in requests])

    calls["qwembed, requests of 3 pairs"] = in_threes
    calls["qwembed, requests of 3 pairs, no prefix cache"] = uncached(reranker, in_threes)
    times, scores = timed_in_turn(calls, repeats)
    reference = np.asarray(scores["model card recipe, one pair at a time"])
    label = f"{len(batch)} pairs, {statistics.mean(map(len, batch)):.0f} tokens on average"
    rows = {"precision": reranker.precision.describe(), "label": label}
    for name, seconds in times.items():
        rows[name] = {
            "pairs_per_s": round(len(batch) / statistics.median(seconds), 2),
            **per_round_ratios(times["model card recipe, one pair at a time"], seconds, key="x_recipe"),
            "max_abs_score_difference": float(np.abs(np.asarray(scores[name]) - reference).max()),
        }
    print(label, {name: rows[name]["pairs_per_s"] for name in times}, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=256, help="BQ sentences")
    parser.add_argument("--lone", type=int, default=32, help="queries embedded one call each (0: skip)")
    parser.add_argument("--pairs", type=int, default=30, help="candidates for the reranker (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    result: dict = {
        "machine": machine(),
        "embedder": embedder_rows(load_sentences(args.data, args.n), args.repeats, args.lone),
    }
    if args.pairs:
        result["reranker"] = reranker_rows(scratch_dir("shared-prefixes-"), args.pairs, args.repeats)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
