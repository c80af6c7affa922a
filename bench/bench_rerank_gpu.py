"""The Qwen3 reranker's forwards on a GPU: packed with fused kernels, packed eager, padded.

    python3 bench/bench_rerank_gpu.py                         # on an H100/H200, about a minute
    .venv/bin/python bench/bench_rerank_gpu.py --device cpu   # smoke run: a 2-layer model

A random ``Qwen3ForCausalLM`` with the Qwen3-Reranker-0.6B shape (28 layers, hidden 1,024, 16 query
and 8 key/value heads of 128, MLP 3,072; ``--device cpu`` builds the 2-layer test fixture instead)
and the real Qwen3 tokenizer, loaded as qwembed serves it (``--dtype auto``: bf16 on CUDA). One
query against ``make_documents`` (bench_rerank.py's mix of short and long passages, some Chinese),
16,384 tokens per batch, three rounds with the forwards in turn; pairs/s from the median round,
and each forward's largest score difference from the padded one. The fixture's initialisation is
wide (std 0.2, so that documents score apart), which makes 28 bf16 layers drift: the differences
are bf16's, not the packing's (docs/benchmarks.md, Reranking).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the reranker checkpoint builder the tests use

RERANKER_0_6B = dict(layers=28, hidden=1024, heads=16, kv_heads=8, head_dim=128, intermediate=3072)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import torch

    from bench_rerank import QUERY, make_documents
    from qwembed.backends.qwen3_pointwise import EAGER
    from qwembed.backends.qwen3_reranker import Qwen3Reranker
    from qwembed.engine.rerank import score_pairs
    from rerank_fixtures import build_tiny_qwen3_reranker

    on_gpu = args.device.startswith("cuda")

    def synchronize() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory(prefix="qwen3-reranker-") as work:
        start = time.perf_counter()
        path = build_tiny_qwen3_reranker(Path(work) / "model", **(RERANKER_0_6B if on_gpu else {}))
        print(f"built in {time.perf_counter() - start:.1f} s", flush=True)
        start = time.perf_counter()
        fused = Qwen3Reranker.load(str(path), device=args.device)
        print(f"loaded in {time.perf_counter() - start:.1f} s; packed: {fused.packed}", flush=True)
        if fused.fusing is not None:
            fused.fusing.join()
        kernels = type(fused.pointwise).__name__
        print(f"element-wise steps: {kernels}, from {time.perf_counter() - start:.1f} s after the load began")
        eager = copy.copy(fused)
        eager.pointwise = EAGER
        padded = copy.copy(fused)
        padded.packed = False
        forwards = {"packed, fused kernels": fused, "packed, eager steps": eager, "padded": padded}

        docs = make_documents(args.docs)
        scores = {name: score_pairs(r, QUERY, docs, max_batch_tokens=16384) for name, r in forwards.items()}
        times: dict[str, list[float]] = {name: [] for name in forwards}
        for _ in range(args.rounds):
            for name, reranker in forwards.items():
                synchronize()
                start = time.perf_counter()
                score_pairs(reranker, QUERY, docs, max_batch_tokens=16384)
                synchronize()
                times[name].append(time.perf_counter() - start)
    padded_s = statistics.median(times["padded"])
    for name in forwards:
        took = statistics.median(times[name])
        change = np.abs(scores[name] - scores["padded"]).max()
        rate = len(docs) / took
        print(f"{name:24s} {rate:8.1f} pairs/s  × padded {padded_s / took:.2f}  max |Δscore| {change:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
