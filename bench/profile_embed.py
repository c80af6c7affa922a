"""Where the time goes: torch profiler summaries of qwembed's engine per precision, one run.

    .venv/bin/python bench/profile_embed.py --model minilm --n 2000 > docs/profiles/minilm-cpu.txt

Embeds the same BQ sentences with float32, ``--dtype auto`` (mixed bf16) and auto + ``--compile``,
and prints, for each, the wall time and the operators that took the most CPU time. ``--window 160``
embeds them 160 at a time instead of in one call, as the server's worker batches a few 32-text
requests: batches of mixed lengths rather than one length-sorted corpus; ``--window 1 --input-type
query`` embeds lone queries, each with the model's query instruction. ``--docs 64`` profiles 64
documents of the model's longest input instead (``bench_embed.long_documents``: BQ sentences
joined to 256 tokens for all-MiniLM-L6-v2), where attention's share shows; ``--doc-tokens 512``
cuts them to that length instead. ``--model qwen3-0.6b-shape`` profiles the Qwen3-Embedding-0.6B
configuration with random weights (``bench_qwen3_cpu.py``):

    .venv/bin/python bench/profile_embed.py --model qwen3-0.6b-shape --docs 4 --doc-tokens 512 \
        --variants auto > docs/profiles/qwen3-0.6b-cpu-long-docs.txt

It profiles one stream
(the torch profiler sees only its own thread), so its texts/s are one stream's. The summaries
in docs/profiles/ were made with this script; docs/benchmarks.md explains what changed between them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import long_documents
from bench_qwen3_cpu import QWEN3_SHAPE, documents, random_qwen3_0_6b
from common import DEFAULT_DATA, load_sentences, machine


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm", help=f"a model name or folder, or {QWEN3_SHAPE}")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=12, help="operators listed per profile")
    parser.add_argument("--window", type=int, default=0, help="texts per embed call (0: all in one)")
    parser.add_argument("--docs", type=int, default=0, help="profile this many long documents instead")
    parser.add_argument(
        "--doc-tokens", type=int, default=0, help="document length (0: the model's longest input)"
    )
    parser.add_argument(
        "--variants", default="float32,auto,compile", help="which of float32, auto, compile to profile"
    )
    parser.add_argument(
        "--input-type", default="document", help="query: with the model's query instruction (Qwen3)"
    )
    args = parser.parse_args()

    from torch.profiler import ProfilerActivity, profile

    from qwembed.engine import Embedder

    model = str(random_qwen3_0_6b()) if args.model == QWEN3_SHAPE else args.model
    texts = load_sentences(args.data, args.n)
    what = f"{len(texts)} sentences of {args.data.name}"
    if args.docs:
        exact = Embedder.load(model, device="cpu", dtype="float32")
        if args.doc_tokens:
            texts = documents(texts, exact.encoder.tokenizer, args.docs, args.doc_tokens)
        else:
            texts = long_documents(texts, exact, args.docs)
        length = f"{args.doc_tokens} tokens" if args.doc_tokens else "the model's longest input"
        what = f"{len(texts)} documents of {length}, from {args.data.name}"
    if args.input_type != "document":
        what += f" as {args.input_type} inputs"
    window = args.window or len(texts)
    calls = f"{window} per call" if args.window else "one call"
    print(f"# {args.model}, {what} ({calls}); {machine()}\n")

    def embed_all(embedder) -> None:
        for start in range(0, len(texts), window):
            embedder.embed(
                texts[start : start + window], truncate=bool(args.docs), input_type=args.input_type
            )

    variants = {
        "float32": ("float32 (exact)", {"dtype": "float32"}),
        "auto": ("auto (mixed bf16)", {}),
        "compile": ("auto + compile", {"compile": True}),
    }
    for name in args.variants.split(","):
        label, options = variants[name]
        # one stream: the profiler records the operators of the thread that started it
        embedder = Embedder.load(model, device="cpu", streams=1, **options)
        embed_all(embedder)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            embed_all(embedder)
            seconds = time.perf_counter() - start
        rate = len(texts) / seconds
        rate_text = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
        print(f"## {label}: {embedder.encoder.precision.describe()}, {rate_text} texts/s\n")
        print(
            prof.key_averages().table(
                sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=48
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
