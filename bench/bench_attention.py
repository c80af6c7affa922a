"""Attention alone on a CPU: our kernel (``backends/cpu_attention.py``; AMX or AVX512-BF16, as
the machine serves) against PyTorch's.

    .venv/bin/python bench/bench_attention.py --out /tmp/attention.json

Both run through ``packing.grouped_attention`` on the same packed bf16 projections, as the BERT
and Qwen3 forwards call it: PyTorch's flash kernel per attention group (rows of similar length,
short rows side by side in tiles) or, with the kernel switched on, each sequence by its bounds.
Cases: 256-token documents (all-MiniLM-L6-v2's limit) and 128 BQ sentences with their real token
lengths, both with MiniLM's 12 heads of 32; the documents with 64-wide heads (BERT-base shape);
and where the kernel handles causal heads of 128 (CPUs without AMX), Qwen3-Embedding-0.6B's
attention (16 query and 8 key/value heads of 128, causal) on 512- and 2,048-token documents.
Timed in turn (A B A B …) on one thread, as each of the engine's CPU streams runs; prints the
median milliseconds, the ratio per round, attention GFLOP/s (4 · length² · width per head, half
of that for causal heads: the query-key pairs computed) and each engine's largest difference from
float32 attention, with the machine's description.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from common import DEFAULT_DATA, emit, load_sentences, machine, timed_in_turn
from qwembed.backends import cpu_attention
from qwembed.backends.packing import PackedBatch, grouped_attention


def case(
    lengths: list[int],
    heads: int,
    width: int,
    kernel,
    repeats: int,
    *,
    kv_heads: int | None = None,
    causal: bool = False,
) -> dict:
    kv_heads = kv_heads or heads
    generator = torch.Generator().manual_seed(0)
    batch = PackedBatch.of([[1] * n for n in lengths], rows=len(lengths), longest=max(lengths), causal=causal)
    qkv = torch.randn(sum(lengths), heads + 2 * kv_heads, width, generator=generator).bfloat16()

    def run(on: bool):
        def attend() -> torch.Tensor:
            cpu_attention.KERNEL.set(kernel if on else None)
            return grouped_attention(batch, qkv, heads, kv_heads, causal=causal)

        return attend

    rounds, outputs = timed_in_turn({"pytorch": run(False), "our kernel": run(True)}, repeats)
    exact = cpu_attention.reference_attention(qkv, batch.bounds, heads, kv_heads, causal=causal)
    flops = sum(4 * (n * (n + 1) / 2 if causal else n * n) * width * heads for n in lengths)
    rows = {}
    for name, seconds in rounds.items():
        took = statistics.median(seconds)
        rows[name] = {
            "ms": took * 1e3,
            "gflops": flops / took / 1e9,
            "x_pytorch_per_round_median": statistics.median(
                p / s for p, s in zip(rounds["pytorch"], seconds, strict=True)
            ),
            "max_abs_diff_to_float32": (outputs[name].float() - exact).abs().max().item(),
        }
    return {"sequences": len(lengths), "mean_tokens": statistics.mean(lengths), **rows}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernel = cpu_attention.kernel()
    if kernel is None:
        raise SystemExit("our attention kernel is unavailable here (see the log): nothing to compare")

    from transformers import AutoTokenizer

    from qwembed.backends.registry import bundled_minilm_path

    tokenizer = AutoTokenizer.from_pretrained(bundled_minilm_path())
    sentences = load_sentences(args.data, 128)
    short = [len(ids) for ids in tokenizer(sentences)["input_ids"]]
    with torch.inference_mode():
        result = {
            "machine": machine(),
            "torch_threads": torch.get_num_threads(),
            "kernel": cpu_attention.KERNEL.name,
            "documents, 12 heads of 32": case([256] * 8, 12, 32, kernel, args.repeats),
            f"{len(short)} BQ sentences, 12 heads of 32": case(short, 12, 32, kernel, args.repeats),
            "documents, 12 heads of 64": case([256] * 8, 12, 64, kernel, args.repeats),
        }
        if kernel.handles(128, True):
            for length, count in ((512, 4), (2048, 1)):
                qwen3 = case([length] * count, 16, 128, kernel, args.repeats, kv_heads=8, causal=True)
                result[f"{count} × {length} tokens, Qwen3-0.6B heads (16 / 8 of 128, causal)"] = qwen3
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
