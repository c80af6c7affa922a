"""The final layer at the pooled tokens only: what it saves, per model shape, in one process.

    .venv/bin/python bench/bench_final_layer.py --repeats 4

A model read at one token per text — Qwen3 embeddings and rerankers at the last, CLS pooling and
cross-encoders at the first — needs its final layer's output only there. The packed forwards run
that layer past its attention for those tokens alone (``packed_qwen3.py``, ``packed_bert.py``).
Here each model runs both ways in turn, in one process: "every token" runs the final layer on all
tokens and picks the pooled ones afterwards, as the forwards did before. The ratio is the lever's
worth on this machine, and the largest difference between the two results shows it changes no
vector or score beyond float rounding.

Random weights in real shapes: Qwen3-Embedding-0.6B (28 layers) on BQ sentences and on 512-token
documents; an XLM-R base embedder with CLS pooling (BGE's; 12 layers) on BQ sentences; cross-encoders
of ms-marco MiniLM's (6 layers) and bge-reranker-base's (12) shapes on bench_rerank.py's
candidate lists. Precision is ``--dtype auto``'s (mixed bf16 where the CPU and the load-time
check allow it).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the checkpoint builders the tests use
from common import DEFAULT_DATA, emit, load_sentences, machine, scratch_dir, timed_in_turn  # noqa: E402


@contextlib.contextmanager
def final_layer_on_every_token() -> Iterator[None]:
    """The forwards as they were: the final layer on every token, the pooled ones picked after."""
    from qwembed.backends import cross_encoder, packed_bert, packed_qwen3, qwen3, sentence_transformer

    bert_forward = packed_bert.packed_bert_forward

    def bert(model, batch, token_types=None, rows=None):
        hidden = bert_forward(model, batch, token_types)
        return hidden if rows is None else hidden[rows.to(hidden.device)]

    def qwen3_pooled(model, batch, pointwise):
        hidden = packed_qwen3.packed_qwen3_forward(model, batch, pointwise)
        return hidden[batch.last_token.to(hidden.device)]

    patched = [
        (cross_encoder, "packed_bert_forward", bert),
        (sentence_transformer, "packed_bert_forward", bert),
    ]
    patched.append((qwen3, "packed_qwen3_pooled", qwen3_pooled))
    saved = [(module, name, getattr(module, name)) for module, name, _ in patched]
    try:
        for module, name, replacement in patched:
            setattr(module, name, replacement)
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def compare(label: str, call: Callable[[], np.ndarray], repeats: int, *, vectors: bool) -> dict:
    """Both ways in turn; ratios per round (every token's seconds / pooled tokens'), and the largest
    difference between the two results (1 − cosine for vectors, |Δ| for scores)."""

    def every_token() -> np.ndarray:
        with final_layer_on_every_token():
            return call()

    times, results = timed_in_turn({"every token": every_token, "pooled tokens": call}, repeats)
    ratios = [
        full / pooled for full, pooled in zip(times["every token"], times["pooled tokens"], strict=True)
    ]
    a, b = (np.asarray(results[name], dtype=np.float64) for name in ("every token", "pooled tokens"))
    difference = float(np.abs(1 - (a * b).sum(axis=1)).max()) if vectors else float(np.abs(a - b).max())
    row = {
        "seconds": {name: [round(t, 4) for t in ts] for name, ts in times.items()},
        "speedup_per_round": [round(x, 3) for x in ratios],
        "speedup_median_of_rounds": round(statistics.median(ratios), 3),
        "largest_difference": difference,
    }
    print(
        f"{label}: {row['speedup_median_of_rounds']}× (rounds {row['speedup_per_round']}), "
        f"largest difference {difference:.2e}",
        flush=True,
    )
    return row


def qwen3_rows(short: list[str], sentences: list[str], docs: int, repeats: int) -> dict:
    from bench_qwen3_cpu import documents, random_qwen3_0_6b
    from qwembed.engine import Embedder

    qwen3 = Embedder.load(str(random_qwen3_0_6b()), device="cpu")
    corpora = {f"{len(short)} BQ sentences": short}
    if docs:
        corpora[f"{docs} documents of 512 tokens"] = documents(sentences, qwen3.encoder.tokenizer, docs, 512)
    rows = {"precision": qwen3.encoder.precision.describe()}
    for corpus, texts in corpora.items():
        label = f"Qwen3 0.6B shape, {corpus}"
        rows[label] = compare(label, lambda texts=texts: qwen3.embed(texts), repeats, vectors=True)
    return rows


def cls_embedder_rows(folder: Path, short: list[str], repeats: int) -> dict:
    from sentence_transformers.sentence_transformer.modules import Pooling

    from qwembed.engine import Embedder
    from xlmr_fixtures import XLMR_BASE, build_xlmr_embedder

    cls = Embedder.load(str(build_xlmr_embedder(folder / "xlmr-cls", shape=XLMR_BASE)), device="cpu")
    cls.encoder.model[1] = Pooling(cls.encoder.dimension, pooling_mode="cls")  # BGE's pooling
    label = f"XLM-R base shape, CLS pooling, {len(short)} BQ sentences"
    return {
        "precision": cls.encoder.precision.describe(),
        label: compare(label, lambda: cls.embed(short), repeats, vectors=True),
    }


def cross_encoder_rows(folder: Path, candidates: int, repeats: int) -> dict:
    from bench_rerank import make_documents
    from qwembed.backends.cross_encoder import CrossEncoderReranker
    from rerank_fixtures import build_minilm_cross_encoder
    from xlmr_fixtures import XLMR_BASE, build_xlmr_cross_encoder

    query, documents = "How do I repay my credit card?", make_documents(candidates)
    builders = {
        "MiniLM-L6 cross-encoder": build_minilm_cross_encoder,
        "XLM-R base cross-encoder": lambda path: build_xlmr_cross_encoder(path, shape=XLMR_BASE),
    }
    rows: dict = {}
    for name, build in builders.items():
        reranker = CrossEncoderReranker.load(str(build(folder / name.replace(" ", "-"))), device="cpu")
        pairs = reranker.tokenize_pairs(query, documents, None)
        label = f"{name}, {len(pairs)} pairs of {statistics.mean(map(len, pairs)):.0f} tokens on average"
        rows[f"{name} precision"] = reranker.precision.describe()
        rows[label] = compare(
            label, lambda r=reranker, pairs=pairs: r.score_token_ids(pairs), repeats, vectors=False
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=256, help="short texts")
    parser.add_argument("--docs", type=int, default=8, help="512-token documents for Qwen3 (0: skip)")
    parser.add_argument("--pairs", type=int, default=100, help="candidates per query for the cross-encoders")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    sentences = load_sentences(args.data, max(args.n, 4000))
    short = sentences[: args.n]
    folder = scratch_dir("final-layer-")
    # one model at a time, each freed when its function returns
    result = {
        "machine": machine(),
        "qwen3": qwen3_rows(short, sentences, args.docs, args.repeats),
        "cls_embedder": cls_embedder_rows(folder, short, args.repeats),
        "cross_encoders": cross_encoder_rows(folder, args.pairs, args.repeats),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
