"""Throughput of qwembed's engine and server against sentence-transformers ``encode``, in one run.

    .venv/bin/python bench/bench_embed.py --model minilm --n 4000

Corpus: the sentences of ../shared/data/BQ/BQ.test.data (Chinese bank questions, short). Prints
texts/s and tokens/s per engine and the ratios to sentence-transformers, with the machine, and
writes JSON with --out. The server is started as a separate process (``qwembed serve``) and loaded
by 8 concurrent clients posting batches of 32, so client and server do not share one GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, free_port, load_sentences, machine, start_server


def timed_pair(a, b, repeats: int) -> tuple[float, float, object, object]:
    """Median seconds of ``a`` and ``b`` run in turn (A B A B …), so drift hits both alike."""
    a(), b()  # warm-up
    times_a, times_b = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        result_a = a()
        times_a.append(time.perf_counter() - start)
        start = time.perf_counter()
        result_b = b()
        times_b.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b), result_a, result_b


async def _load_server(url: str, model: str, texts: list[str], clients: int, batch: int) -> list[float]:
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    queue: asyncio.Queue = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            start = time.perf_counter()
            response = await http.post(
                f"{url}/v1/embeddings", json={"model": model, "input": chunk, "encoding_format": "base64"}
            )
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(timeout=120) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies


def bench_server(model: str, texts: list[str], repeats: int, clients: int, batch: int) -> dict:
    port = free_port()
    server = start_server(model, port, [])
    url = f"http://127.0.0.1:{port}"
    try:
        runs = []
        all_latencies: list[float] = []
        asyncio.run(_load_server(url, model, texts, clients, batch))  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            all_latencies += asyncio.run(_load_server(url, model, texts, clients, batch))
            runs.append(time.perf_counter() - start)
        seconds = statistics.median(runs)
        return {
            "seconds": seconds,
            "texts_per_s": len(texts) / seconds,
            "p50_ms": 1000 * float(np.percentile(all_latencies, 50)),
            "p99_ms": 1000 * float(np.percentile(all_latencies, 99)),
        }
    finally:
        server.terminate()
        server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--client-batch", type=int, default=32)
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from qwembed.engine import Embedder

    texts = load_sentences(args.data, args.n)
    embedder = Embedder.load(args.model, device="cpu")
    tokens = sum(len(ids) for ids in embedder.tokenize(texts))
    reference = SentenceTransformer(embedder.encoder.source, device="cpu")

    st_seconds, qw_seconds, st_vectors, qw_vectors = timed_pair(
        lambda: reference.encode(texts, normalize_embeddings=True),
        lambda: embedder.embed(texts),
        args.repeats,
    )
    cosine = np.sum(np.asarray(st_vectors) * qw_vectors, axis=1)

    result = {
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
        "corpus": f"{args.data.name}: {len(texts)} texts, {tokens / len(texts):.1f} tokens/text",
        "sentence_transformers": {
            "texts_per_s": len(texts) / st_seconds,
            "tokens_per_s": tokens / st_seconds,
        },
        "qwembed_engine": {"texts_per_s": len(texts) / qw_seconds, "tokens_per_s": tokens / qw_seconds},
        "engine_vs_st": st_seconds / qw_seconds,
        "min_cosine_to_st": float(cosine.min()),
    }
    if not args.no_server:
        served = bench_server(args.model, texts, args.repeats, args.clients, args.client_batch)
        served["tokens_per_s"] = tokens / served["seconds"]
        result["qwembed_server"] = served
        result["server_vs_st"] = st_seconds / served["seconds"]
        result["server_vs_engine"] = qw_seconds / served["seconds"]
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
