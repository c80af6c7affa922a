"""Two streams on a CPU: short plans cut for balance, and lone requests on every core, each
against the engine without it and sentence-transformers, in the same rounds.

    .venv/bin/python bench/bench_streams.py --model minilm
    .venv/bin/python bench/bench_streams.py --model qwen3-0.6b-shape --sizes 256 \\
        --loads 1x1,1x32,8x32 --load-texts 256 --repeats 3

Part one, ``Embedder.embed`` on a few hundred BQ sentences, one call each: a plan of a few
batches cut so that the two streams finish together (``plan_batches(streams=)``), against the
same engine filling every batch to the budget (``batching.BALANCED_ROUNDS = 0``) and against
one stream on both threads.

Part two, the server's engine in this process (bench_embed.py's ``InProcessPool``, its "pool" row):
``clients`` concurrent clients posting ``batch`` texts at a time until ``--load-texts`` are done
(a load ``CxB``). A window that runs alone takes both streams' threads, against the same worker
whose windows all keep one stream's threads (``Streams.every_core_tokens`` None); texts/s
and the latency of each request.

The reference in both: sentence-transformers ``encode`` in float32 on the same texts (part two:
one call per request, one after another, as a single client would see it).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_embed import XLMR_SHAPE, model_source  # noqa: E402
from bench_qwen3_cpu import QWEN3_SHAPE  # noqa: E402
from common import (  # noqa: E402
    DEFAULT_DATA,
    compare_engines,
    emit,
    load_sentences,
    machine,
    per_round_ratios,
    timed_in_turn,
)


def load_models(name: str):
    """(our encoder, sentence-transformers on the same weights) for ``--model``."""
    from qwembed.backends import load_encoder

    if name == QWEN3_SHAPE:
        from bench_qwen3_cpu import random_qwen3_0_6b
        from qwembed.eval.st_peer import qwen3_sentence_transformer

        folder = random_qwen3_0_6b()
        return load_encoder(str(folder)), qwen3_sentence_transformer(folder)
    from sentence_transformers import SentenceTransformer

    encoder = load_encoder(model_source(name))  # (also bench_embed's shape names)
    return encoder, SentenceTransformer(encoder.source, device="cpu")


def embed_calls(encoder, reference, texts: list[str]) -> dict:
    """Part one's engines, each embedding ``texts`` in one call."""
    from qwembed.engine import Embedder, batching

    two, one = Embedder(encoder), Embedder(encoder, streams=1)

    def full_batches():
        saved, batching.BALANCED_ROUNDS = batching.BALANCED_ROUNDS, 0
        try:
            return two.embed(texts)
        finally:
            batching.BALANCED_ROUNDS = saved

    return {
        "sentence-transformers": lambda: reference.encode(texts, normalize_embeddings=True),
        "qwembed, full batches": full_batches,
        "qwembed, batches cut for the streams": lambda: two.embed(texts),
        "qwembed, one stream": lambda: one.embed(texts),
    }


def on_one_streams_threads(worker, load):
    """``load``, run with every window on one stream's threads; then the worker as it was."""

    def run() -> None:
        streams = worker.streams
        worker.streams = dataclasses.replace(streams, every_core_tokens=None)
        try:
            load()
        finally:
            worker.streams = streams

    return run


REFERENCE = "sentence-transformers, one request at a time"


def serving(encoder, reference, texts: list[str], loads: list[tuple[int, int]], repeats: int) -> dict:
    """Part two: each load, and the same load with no window on every core, in turn."""
    from bench_embed import InProcessPool

    pool = InProcessPool(encoder)
    result: dict = {"every_core_tokens": pool.worker.streams.every_core_tokens}
    try:
        for clients, batch in loads:
            requests = [texts[i : i + batch] for i in range(0, len(texts), batch)]
            narrow, ours = [], []  # each request's seconds

            def one_by_one(requests=requests) -> None:
                for request in requests:
                    reference.encode(request, normalize_embeddings=True)

            calls = {
                REFERENCE: one_by_one,
                "qwembed, windows on one stream's threads": on_one_streams_threads(
                    pool.worker, pool.load(texts, clients, batch, narrow)
                ),
                "qwembed, lone windows on every core": pool.load(texts, clients, batch, ours),
            }
            rounds, _ = timed_in_turn(calls, repeats)
            latencies = dict(zip(list(calls)[1:], (narrow, ours), strict=True))
            rows = {}
            for label, seconds in rounds.items():
                rows[label] = {
                    "texts_per_s": len(texts) / statistics.median(seconds),
                    **per_round_ratios(rounds[REFERENCE], seconds),
                }
                if label in latencies:
                    timed = latencies[label][len(requests) :]  # the first call's are the warm-up's
                    rows[label]["p50_ms"] = 1000 * float(np.percentile(timed, 50))
                    rows[label]["p99_ms"] = 1000 * float(np.percentile(timed, 99))
            result[f"{clients} clients x {batch} texts"] = rows
    finally:
        pool.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="minilm", help=f"a model name or folder, {QWEN3_SHAPE} or {XLMR_SHAPE}"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sizes", default="256,600,1000", help="part one: texts per embed call")
    parser.add_argument("--loads", default="1x1,1x8,1x32,2x32,4x8,8x32", help="part two: CLIENTSxBATCH")
    parser.add_argument("--load-texts", type=int, default=2000, help="part two: texts per load")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    encoder, reference = load_models(args.model)
    result = {"machine": machine(), "torch_threads": torch.get_num_threads(), "model": args.model}
    for size in (int(s) for s in args.sizes.split(",") if s):
        texts = load_sentences(args.data, size)
        rounds, vectors = timed_in_turn(embed_calls(encoder, reference, texts), args.repeats)
        tokens = sum(len(ids) for ids in encoder.tokenize(texts))
        result[f"embed {size} texts"] = compare_engines(
            rounds, vectors, reference="sentence-transformers", texts=size, tokens=tokens
        )
    loads = [tuple(int(x) for x in load.split("x")) for load in args.loads.split(",") if load]
    if loads:
        texts = load_sentences(args.data, args.load_texts)
        result["serving"] = serving(encoder, reference, texts, loads, args.repeats)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
