"""Knowledge-base benchmarks (results go to docs/knowledge-base.md).

# store only, precomputed vectors: ingest rate, p50/p99 per mode exact and with the ANN index,
# ANN recall@10 against exact search (random clustered vectors unless --vectors X.npy is given)
.venv/bin/python bench/bench_kb.py store --rows 100000 --dim 384
.venv/bin/python bench/bench_kb.py store --rows 1000000 --dim 384     # the 1M run (long)
# end to end with a real model: documents/s and chunks/s (StackFAQ threads)
.venv/bin/python bench/bench_kb.py ingest --model minilm
# Chinese keyword search: LanceDB n-gram / icu tokenizers vs jieba segmentation (LCQMC, BQ)
.venv/bin/python bench/bench_kb.py zh-keywords --queries 1000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DATA = REPO.parent / "shared" / "data"


def _sentences(limit: int) -> list[str]:
    """Real short texts (Chinese question pairs, English FAQ) to give the keyword index real terms."""
    texts: list[str] = []
    for path in sorted(DATA.glob("*/*.data")):
        for line in path.read_text(encoding="utf-8").splitlines():
            texts += line.split("\t")[:2]
    faq = DATA / "StackFAQ" / "stackExchange-FAQ.json"
    if faq.is_file():
        for thread in json.loads(faq.read_text(encoding="utf-8"))["root"]["qapair"]:
            texts += [t for t in [thread["question"], *thread["answer"], *thread["rephr"]] if t and t != "*"]
    return texts[:limit] or [f"synthetic text number {i}" for i in range(limit)]


def _clustered(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 1,000 centres: closer to real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 1000, rows)] + 0.6 * rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _percentiles(samples: list[float]) -> str:
    p50, p99 = np.percentile(np.array(samples) * 1000, [50, 99])
    return f"p50 {p50:.1f} ms · p99 {p99:.1f} ms"


def bench_store(args: argparse.Namespace) -> None:
    from qwembed.kb.keywords import segment
    from qwembed.kb.lance_store import LanceStore
    from qwembed.kb.search import reciprocal_rank_fusion
    from qwembed.kb.store import ChunkBatch

    vectors = np.load(args.vectors).astype(np.float32) if args.vectors else _clustered(args.rows, args.dim)
    rows, dim = vectors.shape
    texts = _sentences(rows)
    texts = [texts[i % len(texts)] for i in range(rows)]
    keywords = [segment(t) for t in texts[: min(rows, 200_000)]]
    keywords = [keywords[i % len(keywords)] for i in range(rows)]
    store = LanceStore(Path(tempfile.mkdtemp(prefix="bench-kb-")), dim, ann_threshold=rows + 1)
    start = time.perf_counter()
    for lo in range(0, rows, args.batch):
        hi = min(rows, lo + args.batch)
        ids = [f"d{i}" for i in range(lo, hi)]
        store.replace_documents(
            [],
            ChunkBatch(
                [f"{d}#0" for d in ids],
                ids,
                [0] * len(ids),
                [1] * len(ids),
                texts[lo:hi],
                keywords[lo:hi],
                [""] * len(ids),
                ["{}"] * len(ids),
                ["h"] * len(ids),
                vectors[lo:hi],
            ),
        )
    elapsed = time.perf_counter() - start
    print(
        f"## store: {rows:,} chunks × {dim} dims ({'given' if args.vectors else 'clustered random'} vectors)"
    )
    print(f"ingest: {elapsed:.1f} s, {rows / elapsed:,.0f} chunks/s (batches of {args.batch:,})")
    start = time.perf_counter()
    store.maintain()  # what the server does in the background: folds the new rows into the FTS index
    print(f"keyword index update (maintain): {time.perf_counter() - start:.1f} s")
    rng = random.Random(1)
    picks = [rng.randrange(rows) for _ in range(args.queries)]
    queries = [
        vectors[i] + 0.05 * np.random.default_rng(i).standard_normal(dim).astype(np.float32) for i in picks
    ]
    terms = [keywords[i] for i in picks]

    def run(label: str) -> dict[str, list[str]]:
        results: dict[str, list[str]] = {}
        timings: dict[str, list[float]] = {"dense": [], "keyword": [], "hybrid": []}
        for n, (vector, term) in enumerate(zip(queries, terms, strict=True)):
            t0 = time.perf_counter()
            dense = store.dense_search(vector, 10, [])
            t1 = time.perf_counter()
            keyword = store.keyword_search(term, 20, [])
            t2 = time.perf_counter()
            reciprocal_rank_fusion([store.dense_search(vector, 20, []), keyword], 10)
            t3 = time.perf_counter()
            timings["dense"].append(t1 - t0)
            timings["keyword"].append(t2 - t1)
            timings["hybrid"].append(t3 - t2 + (t2 - t1))
            results[str(n)] = [h.chunk_id for h in dense]
        for mode, samples in timings.items():
            print(f"{label} {mode}: {_percentiles(samples)}")
        return results

    exact = run("exact")
    start = time.perf_counter()
    store.build_vector_index()
    print(f"ANN index (IVF_HNSW_SQ) build: {time.perf_counter() - start:.1f} s")
    approximate = run("ann")
    recall = np.mean([len(set(exact[q]) & set(approximate[q])) / 10 for q in exact])
    print(f"ANN recall@10 vs exact: {recall:.3f} over {len(exact)} queries")


def bench_ingest(args: argparse.Namespace) -> None:
    from qwembed.engine import Embedder
    from qwembed.kb import Document, KnowledgeBaseManager

    threads = json.loads((DATA / "StackFAQ" / "stackExchange-FAQ.json").read_text(encoding="utf-8"))
    documents = [
        Document(f"t{i}", "\n\n".join(x for x in [t["question"], *t["answer"]] if x))
        for i, t in enumerate(threads["root"]["qapair"])
    ][: args.docs]
    embedder = Embedder.load(args.model)
    manager = KnowledgeBaseManager(Path(tempfile.mkdtemp(prefix="bench-kb-")), lambda model: embedder)
    manager.create("bench", args.model)
    start = time.perf_counter()
    chunks = sum(report.chunks for report in manager.add_stream("bench", documents, batch_size=32))
    elapsed = time.perf_counter() - start
    print(f"## end-to-end ingest with {args.model}: {len(documents)} documents, {chunks} chunks")
    print(f"{elapsed:.1f} s: {len(documents) / elapsed:.1f} documents/s, {chunks / elapsed:.1f} chunks/s")


def bench_zh_keywords(args: argparse.Namespace) -> None:
    import lancedb
    import pyarrow as pa
    from lancedb.index import FTS

    from qwembed.kb.keywords import segment

    variants = {
        "ngram 1-2": (FTS(base_tokenizer="ngram", ngram_min_length=1, ngram_max_length=2, stem=False,
                          remove_stop_words=False), False),
        "ngram 2-2": (FTS(base_tokenizer="ngram", ngram_min_length=2, ngram_max_length=2, stem=False,
                          remove_stop_words=False), False),
        "ngram 1-3": (FTS(base_tokenizer="ngram", ngram_min_length=1, ngram_max_length=3, stem=False,
                          remove_stop_words=False), False),
        "icu": (FTS(base_tokenizer="icu", stem=False, remove_stop_words=False), False),
        "jieba + simple (chosen)": (FTS(base_tokenizer="simple"), True),
    }  # fmt: skip
    print("| data | tokenizer | R@1 | R@5 | MRR@10 | ms/query |\n|---|---|---|---|---|---|")
    for name in ("LCQMC/LCQMC.test.data", "BQ/BQ.test.data"):
        rows = [line.split("\t") for line in (DATA / name).read_text(encoding="utf-8").splitlines()]
        corpus = sorted({r[1] for r in rows if len(r) == 3})
        positives = [(r[0], r[1]) for r in rows if len(r) == 3 and r[2] == "1"]
        random.Random(0).shuffle(positives)
        positives = positives[: args.queries]
        index = {text: i for i, text in enumerate(corpus)}
        for label, (config, segmented) in variants.items():
            db = lancedb.connect(tempfile.mkdtemp(prefix="bench-zh-"))
            column = [segment(t) for t in corpus] if segmented else corpus
            table = db.create_table("t", data=pa.table({"i": list(range(len(corpus))), "text": column}))
            table.create_index("text", config=config)
            r1 = r5 = mrr = 0.0
            start = time.perf_counter()
            for query, relevant in positives:
                text = segment(query) if segmented else query
                hits = [
                    h["i"]
                    for h in table.search(text, query_type="fts").select(["i", "_score"]).limit(10).to_list()
                ]
                gold = index[relevant]
                r1 += gold in hits[:1]
                r5 += gold in hits[:5]
                mrr += 1 / (hits.index(gold) + 1) if gold in hits else 0
            ms = (time.perf_counter() - start) * 1000 / len(positives)
            n = len(positives)
            print(f"| {name.split('/')[0]} ({len(corpus)} docs, {n} queries) | {label} | {r1 / n:.3f} | "
                  f"{r5 / n:.3f} | {mrr / n:.3f} | {ms:.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    store = commands.add_parser("store")
    store.add_argument("--rows", type=int, default=100_000)
    store.add_argument("--dim", type=int, default=384)
    store.add_argument(
        "--vectors", type=Path, default=None, help=".npy of real embeddings (overrides rows/dim)"
    )
    store.add_argument("--batch", type=int, default=10_000)
    store.add_argument("--queries", type=int, default=100)
    store.set_defaults(func=bench_store)
    ingest = commands.add_parser("ingest")
    ingest.add_argument("--model", default="minilm")
    ingest.add_argument("--docs", type=int, default=125)
    ingest.set_defaults(func=bench_ingest)
    zh = commands.add_parser("zh-keywords")
    zh.add_argument("--queries", type=int, default=1000)
    zh.set_defaults(func=bench_zh_keywords)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
