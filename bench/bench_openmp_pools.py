"""Served lone requests with and without idle OpenMP pools handed back (``engine/openmp.py``).

    .venv/bin/python bench/bench_openmp_pools.py --lone 32 --repeats 3

The server's engine in this process (bench_embed.py's ``InProcessPool``) on the Qwen3-0.6B shape
(random weights, real tokenizer, ``--dtype auto``; ``--model minilm`` for all-MiniLM-L6-v2, whose
"queries" are plain texts), in rounds that alternate two modes:

* pools kept (as before): the main thread holds the OpenMP workers the model's load gave it, and
  each stream keeps the ones its lone windows on every core started;
* **pools handed back**: the main thread hands its workers back (as ``ModelPool.add_encoder`` does
  on the thread that loaded the model), and a stream hands back its own after each lone window
  (``Streams.every_core``).

Loads: ``--lone`` instructed queries posted one after another (a search box: each a lone window on
every core), the same as documents, and 8 clients posting one query each (``8x1``), 64 queries in
all; then ``--load`` (default 8 clients × 32 queries, 256 in all), where windows share the cores.
p50 and p99 latency per request, texts/s. Each round starts with a few untimed requests, so the
pools of the round before are settled.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the checkpoint builders the tests use
from common import DEFAULT_DATA, emit, load_sentences, machine  # noqa: E402


def main_thread_pool() -> None:
    """Give the calling thread OpenMP workers, as a model's load on every core does."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    torch.randn(512, 512) @ torch.randn(512, 512)
    torch.set_num_threads(threads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="qwen3-0.6b-shape", help="qwen3-0.6b-shape, or a model name or folder"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--lone", type=int, default=32, help="queries posted one after another")
    parser.add_argument("--load", default="8x32", help="CLIENTSxBATCH for the shared load")
    parser.add_argument("--load-texts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from bench_embed import InProcessPool
    from bench_qwen3_cpu import random_qwen3_0_6b
    from qwembed.backends import load_encoder
    from qwembed.engine import openmp, streams

    encoder = load_encoder(str(random_qwen3_0_6b()) if args.model == "qwen3-0.6b-shape" else args.model)
    pool = InProcessPool(encoder)
    texts = load_sentences(args.data, max(args.load_texts, args.lone, 64))
    instructed = "query" if "qwen3" in args.model else "document"  # (MiniLM has no query prompt)
    clients, batch = (int(part) for part in args.load.split("x"))
    loads = {
        f"{args.lone} lone queries, one after another": (texts[: args.lone], 1, 1, instructed),
        f"{args.lone} lone documents, one after another": (texts[: args.lone], 1, 1, "document"),
        "8 clients x 1 query, 64 queries": (texts[:64], 8, 1, instructed),
        f"{args.load} queries, {args.load_texts} in all": (
            texts[: args.load_texts],
            clients,
            batch,
            instructed,
        ),
    }
    release = openmp.release_thread_pool

    def kept() -> None:
        streams.release_thread_pool = lambda: False
        main_thread_pool()

    def handed_back() -> None:
        streams.release_thread_pool = release
        release()

    modes = {"pools kept": kept, "pools handed back": handed_back}
    rounds: dict = {label: {mode: [] for mode in modes} for label in loads}
    for repeat in range(args.repeats):
        order = list(modes) if repeat % 2 == 0 else list(reversed(modes))
        for mode in order:
            modes[mode]()
            pool.load(texts[:4], 1, 1, input_type=instructed)()  # settle the pools of the round before
            for label, (corpus, count, size, kind) in loads.items():
                latencies: list[float] = []
                start = time.perf_counter()
                pool.load(corpus, count, size, latencies, input_type=kind)()
                rounds[label][mode].append((time.perf_counter() - start, latencies, len(corpus)))
        print(f"round {repeat + 1} done", flush=True)
    pool.close()
    streams.release_thread_pool = release

    result: dict = {"machine": machine(), "precision": encoder.precision.describe(), "loads": {}}
    for label, by_mode in rounds.items():
        rows = {}
        for mode, runs in by_mode.items():
            latencies = sorted(x for _, lat, _ in runs for x in lat)
            rows[mode] = {
                "texts_per_s": statistics.median(n / seconds for seconds, _, n in runs),
                "p50_ms": 1000 * statistics.median(latencies),
                "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
                "p50_ms_per_round": [round(1000 * statistics.median(lat), 1) for _, lat, _ in runs],
            }
        before, after = rows["pools kept"], rows["pools handed back"]
        after["x_p50_per_round"] = [
            round(b / a, 2)
            for b, a in zip(before["p50_ms_per_round"], after["p50_ms_per_round"], strict=True)
        ]
        result["loads"][label] = rows
        print(
            label,
            {mode: f"p50 {row['p50_ms']:.1f} ms, {row['texts_per_s']:.1f}/s" for mode, row in rows.items()},
        )
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
