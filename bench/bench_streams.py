"""Two streams on a CPU: short plans cut for balance, and lone requests on every core, each
against the engine without it and sentence-transformers, in the same rounds.

    .venv/bin/python bench/bench_streams.py --model minilm
    .venv/bin/python bench/bench_streams.py --model qwen3-0.6b-shape --sizes 256 \\
        --loads 1x1,1x32,8x32 --load-texts 256 --repeats 3

Part one, ``Embedder.embed`` on a few hundred BQ sentences, one call each: a plan of a few
batches cut so that the two streams finish together (``plan_batches(streams=)``), against the
same engine filling every batch to the budget (``batching.BALANCED_ROUNDS = 0``) and against
one stream on both threads.

Part two, the server's engine in this process (``ModelPool``, bench_embed.py's "pool" row):
``clients`` concurrent clients posting ``batch`` texts at a time until ``--load-texts`` are done
(a load ``CxB``). A window that runs alone takes both streams' threads, against the same worker
whose windows all keep one stream's threads (``Streams.every_core_tokens`` None); texts/s
and the latency of each request.

The reference in both: sentence-transformers ``encode`` in float32 on the same texts (part two:
one call per request, one after another, as a single client would see it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402
    DEFAULT_DATA,
    compare_engines,
    emit,
    load_sentences,
    machine,
    per_round_ratios,
    timed_in_turn,
)

QWEN3_SHAPE = "qwen3-0.6b-shape"


def load_models(name: str):
    """(our encoder, sentence-transformers on the same weights) for ``--model``."""
    from qwembed.backends import load_encoder

    if name == QWEN3_SHAPE:
        from bench_qwen3_cpu import QWEN3_0_6B, random_qwen3_0_6b, sentence_transformer

        folder = random_qwen3_0_6b()
        return load_encoder(str(folder)), sentence_transformer(folder, QWEN3_0_6B["hidden_size"])
    from sentence_transformers import SentenceTransformer

    encoder = load_encoder(name)
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


class Load:
    """``clients`` clients posting ``batch`` texts at a time to a ``ModelPool`` in this process; each
    call's request latencies are kept (``latencies`` leaves out the first call, a warm-up)."""

    def __init__(self, pool, name: str, texts: list[str], clients: int, batch: int):
        self.pool, self.name, self.clients = pool, name, clients
        self.requests = [texts[i : i + batch] for i in range(0, len(texts), batch)]
        self.runs: list[list[float]] = []

    @property
    def latencies(self) -> list[float]:
        return [seconds for run in self.runs[1:] for seconds in run]

    def __call__(self) -> None:
        self.runs.append([])
        asyncio.run(self._run(self.runs[-1]))

    async def _run(self, latencies: list[float]) -> None:
        from qwembed.engine.inputs import EmbedOptions

        queue: asyncio.Queue = asyncio.Queue()
        for request in self.requests:
            queue.put_nowait(request)

        async def client() -> None:
            while not queue.empty():
                request = queue.get_nowait()
                start = time.perf_counter()
                await self.pool.embed(self.name, request, EmbedOptions())
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(client() for _ in range(self.clients)))


def on_one_streams_threads(worker, load: Load):
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
    from qwembed.engine.pool import BatchSettings, ModelPool

    pool = ModelPool(BatchSettings())
    pool.add_encoder(encoder)
    pool.start()
    name = pool.resolve(None, "embedding")
    worker = pool._models[name].worker  # the one model's batching worker
    result: dict = {"every_core_tokens": worker.streams.every_core_tokens}
    try:
        for clients, batch in loads:
            narrow, ours = (Load(pool, name, texts, clients, batch) for _ in range(2))

            def one_by_one(requests=ours.requests) -> None:
                for request in requests:
                    reference.encode(request, normalize_embeddings=True)

            calls = {
                REFERENCE: one_by_one,
                "qwembed, windows on one stream's threads": on_one_streams_threads(worker, narrow),
                "qwembed, lone windows on every core": ours,
            }
            rounds, _ = timed_in_turn(calls, repeats)
            rows = {}
            for label, load in ((REFERENCE, None), *zip(list(calls)[1:], (narrow, ours), strict=True)):
                row = {
                    "texts_per_s": len(texts) / statistics.median(rounds[label]),
                    **per_round_ratios(rounds[REFERENCE], rounds[label]),
                }
                if load is not None:
                    row["p50_ms"] = 1000 * float(np.percentile(load.latencies, 50))
                    row["p99_ms"] = 1000 * float(np.percentile(load.latencies, 99))
                rows[label] = row
            result[f"{clients} clients x {batch} texts"] = rows
    finally:
        pool.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm", help=f"a model name or folder, or {QWEN3_SHAPE}")
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
