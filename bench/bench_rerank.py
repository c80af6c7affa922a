"""Rerank throughput: pairs/s for one query × N documents.

Qwen3 path (a random Qwen3 causal LM, smaller than Qwen3-Reranker-0.6B so it runs on a laptop CPU):
  * qwembed: token-budget batches, the padding-free forward, LM head on the last position's yes/no
    rows only; the same through the Hugging Face model's left-padded forward; and in mixed bf16
    (on CPUs with bf16 units);
  * transformers, one pair at a time with the model card's full-vocabulary logits (and, to
    separate the two savings, with ``logits_to_keep=1``);
  * sentence-transformers CrossEncoder on the same checkpoint (causal-LM mode, ``logits_to_keep=1``).
Cross-encoder path (all-MiniLM-L6-v2 backbone with a fresh head; or, with ``--cross-encoder
xlmr-base``, a random XLM-R of bge-reranker-base's shape on MiniLM's vocabulary):
  * qwembed's CrossEncoderReranker (float32, and mixed bf16 on CPUs with bf16 units; packed, and
    padded through sentence-transformers' modules) vs CrossEncoder.predict vs transformers one
    pair at a time.

    .venv/bin/python bench/bench_rerank.py [--docs 100] [--rounds 2] [--threads 2] \
        [--only qwen3|cross-encoder] [--cross-encoder minilm|xlmr-base]
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from qwembed.backends.cross_encoder import CrossEncoderReranker
from qwembed.backends.precision import cpu_has_bf16_units
from qwembed.backends.qwen3_reranker import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, Qwen3Reranker
from qwembed.engine.rerank import score_pairs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from rerank_fixtures import build_minilm_cross_encoder, build_tiny_qwen3_reranker
from xlmr_fixtures import XLMR_BASE, build_xlmr_cross_encoder

#: ``--cross-encoder`` choices: (title, builder of the model folder)
CROSS_ENCODERS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "minilm": ("all-MiniLM-L6-v2 backbone, fresh head", build_minilm_cross_encoder),
    "xlmr-base": (
        "random XLM-R of bge-reranker-base's shape: 12 layers, hidden 768",
        lambda path: build_xlmr_cross_encoder(path, shape=XLMR_BASE),
    ),
}

QUERY = "Which rivers flow through the cities of central Europe?"
TEXT = (
    "the river flows north through a city with old bridges harbours trade markets and "
    "cathedrals while the valley holds vineyards forests villages and railway lines"
)
_ROLE = "{{{{ messages | selectattr('role', 'eq', '{}') | map(attribute='content') | first }}}}"
ST_CHAT_TEMPLATE = (
    f"{PREFIX}<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {_ROLE.format('query')}\n"
    f"<Document>: {_ROLE.format('document')}{SUFFIX}"
    "{{ '' }}"  # Jinja drops a template's final newline; the suffix ends in "\n\n"
)
CHINESE = "长江黄河流经许多城市，沿岸有港口、桥梁和古老的城镇。"


def make_documents(n: int, seed: int = 0) -> list[str]:
    """A realistic first-stage candidate list: mostly short passages, a few long ones, some Chinese."""
    rng = random.Random(seed)
    words_pool = TEXT.split()
    docs = []
    for i in range(n):
        words = int(rng.lognormvariate(4.0, 0.6))  # median ~55 words, a tail past 200
        text = " ".join(rng.choice(words_pool) for _ in range(max(words, 3)))
        docs.append(CHINESE * (1 + words // 40) if i % 10 == 0 else text)
    return docs


Method = Callable[[list[str]], Sequence[float]]


Timing = tuple[float, float, np.ndarray]  # best wall seconds, best CPU seconds, scores


def compare(methods: dict[str, Method], docs: list[str], rounds: int) -> dict[str, Timing]:
    """Best wall and CPU time per method. Methods take turns within each round, so load from other
    processes on a shared machine hits them alike; CPU seconds are the steadier figure there."""
    for fn in methods.values():
        fn(docs[:4])  # warm-up: allocator, kernels, tokenizer caches
    best: dict[str, Timing] = {label: (float("inf"), float("inf"), np.zeros(0)) for label in methods}
    for _ in range(rounds):
        for label, fn in methods.items():
            wall, cpu = time.perf_counter(), time.process_time()
            scores = np.asarray(fn(docs), dtype=np.float64)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best_wall, best_cpu, _ = best[label]
            best[label] = (min(wall, best_wall), min(cpu, best_cpu), scores)
    return best


def report(title: str, n: int, results: dict[str, Timing]) -> None:
    (first, (base_wall, base_cpu, ours)), *_ = results.items()
    print(f"\n{title}")
    print(f"  {'':<50} {'pairs/s':>8} {'×':>6} {'CPU s':>7} {'×':>6}  max |Δscore|")
    for label, (wall, cpu, scores) in results.items():
        diff = "" if label == first else f"{np.abs(scores - ours).max():.1e}"
        print(
            f"  {label:<50} {n / wall:8.1f} {wall / base_wall:6.1f} {cpu:7.2f} {cpu / base_cpu:6.1f}  {diff}"
        )


def bench_qwen3(work: Path, docs: list[str], rounds: int) -> None:
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForCausalLM

    path = build_tiny_qwen3_reranker(
        work / "qwen3", layers=4, hidden=256, heads=4, kv_heads=2, head_dim=64, intermediate=768
    )
    reranker = Qwen3Reranker.load(str(path), device="cpu", dtype="float32")
    padded = copy.copy(reranker)  # the same weights through the Hugging Face model's padded forward
    padded.packed = False
    # mixed bf16 asked for explicitly: on this wide random initialisation the load-time check
    # (scores within 0.01 of float32) may refuse it under --dtype auto
    mixed = Qwen3Reranker.load(str(path), device="cpu", dtype="bfloat16") if cpu_has_bf16_units() else None
    lengths = [len(s) for s in reranker.tokenize_pairs(QUERY, docs, None)]
    print(f"Qwen3 random causal LM: 4 layers, hidden 256, vocab {len(reranker.tokenizer)}")
    print(f"  {len(docs)} pairs, tokens per pair: median {int(np.median(lengths))}, max {max(lengths)}")

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    no_yes = [reranker.tokenizer.convert_tokens_to_ids(t) for t in ("no", "yes")]

    def one_at_a_time(batch: list[str], keep: int = 0) -> list[float]:
        # The model card's recipe, unbatched (keep=0: logits for every position, as it computes them).
        out = []
        with torch.inference_mode():
            for ids in reranker.tokenize_pairs(QUERY, batch, None):
                logits = model(input_ids=torch.tensor([ids]), logits_to_keep=keep).logits[:, -1, no_yes]
                out.append(torch.softmax(logits, dim=-1)[0, 1].item())
        return out

    # sentence-transformers reads a causal LM as a CrossEncoder with a yes/no LogitScore head
    # (sigmoid(yes - no) = P(yes)); it renders pairs through a chat template, given the official one.
    cross = CrossEncoder(str(path), device="cpu", processor_kwargs={"chat_template": ST_CHAT_TEMPLATE})
    methods: dict[str, Method] = {
        "qwembed rerank (batched, last-position yes/no)": lambda b: score_pairs(reranker, QUERY, b),
        "qwembed rerank, max_batch_tokens=4096": lambda b: score_pairs(
            reranker, QUERY, b, max_batch_tokens=4096
        ),
        "qwembed rerank, padded forward": lambda b: score_pairs(padded, QUERY, b),
        **({"qwembed rerank, mixed bf16": lambda b: score_pairs(mixed, QUERY, b)} if mixed else {}),
        "transformers, one pair at a time, full logits": one_at_a_time,
        "transformers, one pair at a time, last logits": lambda b: one_at_a_time(b, keep=1),
        "sentence-transformers CrossEncoder (bs 32)": lambda b: cross.predict(
            [(QUERY, doc) for doc in b], batch_size=32
        ),
    }
    report("Qwen3 reranker path", len(docs), compare(methods, docs, rounds))


def bench_cross_encoder(work: Path, docs: list[str], rounds: int, kind: str = "minilm") -> None:
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    title, build = CROSS_ENCODERS[kind]
    path = build(work / kind)
    reranker = CrossEncoderReranker.load(str(path), device="cpu", dtype="float32")
    auto = CrossEncoderReranker.load(str(path), device="cpu")  # mixed bf16 where its check passes
    print(f"cross-encoder, --dtype auto: {auto.precision.describe()} ({auto.calibration})")
    mixed = (
        CrossEncoderReranker.load(str(path), device="cpu", dtype="bfloat16") if cpu_has_bf16_units() else None
    )
    padded = CrossEncoderReranker.load(str(path), device="cpu", dtype="float32")
    padded.packed = False  # the padded forward through sentence-transformers' modules
    mixed_padded = None
    if mixed is not None:
        mixed_padded = CrossEncoderReranker.load(str(path), device="cpu", dtype="bfloat16")
        mixed_padded.packed = False
    cross = CrossEncoder(str(path), device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()

    def one_at_a_time(batch: list[str]) -> list[float]:
        out = []
        with torch.inference_mode():
            for doc in batch:
                logits = model(**tokenizer(QUERY, doc, truncation=True, return_tensors="pt")).logits
                out.append(torch.sigmoid(logits)[0, 0].item())
        return out

    methods: dict[str, Method] = {
        "qwembed rerank (token-budget batches)": lambda b: score_pairs(reranker, QUERY, b),
        "qwembed rerank, padded forward": lambda b: score_pairs(padded, QUERY, b),
        **({"qwembed rerank, mixed bf16": lambda b: score_pairs(mixed, QUERY, b)} if mixed else {}),
        **(
            {"qwembed rerank, mixed bf16, padded": lambda b: score_pairs(mixed_padded, QUERY, b)}
            if mixed_padded
            else {}
        ),
        "qwembed rerank, max_batch_tokens=4096": lambda b: score_pairs(
            reranker, QUERY, b, max_batch_tokens=4096
        ),
        "sentence-transformers CrossEncoder.predict (bs 32)": lambda b: cross.predict(
            [(QUERY, doc) for doc in b], batch_size=32
        ),
        "transformers, one pair at a time": one_at_a_time,
    }
    report(f"Cross-encoder path ({title})", len(docs), compare(methods, docs, rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100, help="documents per query")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs per method (the best is kept)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", choices=["qwen3", "cross-encoder"], help="run one of the two parts")
    parser.add_argument("--cross-encoder", choices=list(CROSS_ENCODERS), default="minilm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU threads, load average {os.getloadavg()[0]:.1f}")
    docs = make_documents(args.docs)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "cross-encoder":
            bench_qwen3(Path(tmp), docs, args.rounds)
        if args.only != "qwen3":
            bench_cross_encoder(Path(tmp), docs, args.rounds, args.cross_encoder)
    print(f"\n×: time divided by qwembed's default; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
