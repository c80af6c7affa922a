"""Hybrid-search quality of ``qwembed kb``: dense, keyword and each fusion, through ``Collection.search``.

Document-level R@1, R@5 and MRR@10 (results are one chunk per document, the default). Results go
to docs/knowledge-base.md ("Hybrid fusion").

# StackFAQ (English): 125 threads as documents, every rephrasing (1,249) as a query
.venv/bin/python bench/bench_kb_hybrid.py stackfaq --model minilm
# LCQMC (Chinese): the test set's distinct sentence2 texts (12,064) as documents, 1,000 sampled
# positive pairs' sentence1 as queries
.venv/bin/python bench/bench_kb_hybrid.py lcqmc --model use-multilingual
.venv/bin/python bench/bench_kb_hybrid.py lcqmc --model minilm     # a model that cannot read Chinese
# keyword search only, LanceDB's FTS as the store builds it: chunks indexed under jieba's terms
# alone (before) or with the CJK characters of longer words too (keywords.index_terms; LCQMC, BQ)
.venv/bin/python bench/bench_kb_hybrid.py zh-unigrams
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from common import scratch_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DATA = REPO.parent / "shared" / "data"

from qwembed.kb import Document, KnowledgeBaseManager  # noqa: E402

# (label, search options): the old behaviour first (chunk-level RRF, documents deduplicated after)
CONFIGS = [
    ("dense", {"mode": "dense"}),
    ("keyword", {"mode": "keyword"}),
    ("hybrid, rrf over chunks (before)", {"mode": "hybrid", "fusion": "rrf", "per_document": False}),
    ("hybrid, rrf", {"mode": "hybrid", "fusion": "rrf"}),
    ("hybrid, relative_score", {"mode": "hybrid", "fusion": "relative_score"}),
    ("hybrid, dbsf (default)", {"mode": "hybrid", "fusion": "dbsf"}),
]


def stackfaq(queries: int) -> tuple[list[Document], list[tuple[str, str]]]:
    threads = json.loads((DATA / "StackFAQ" / "stackExchange-FAQ.json").read_text(encoding="utf-8"))
    threads = threads["root"]["qapair"]
    documents = [
        Document(f"t{i}", "\n\n".join(x for x in [t["question"], *t["answer"]] if x))
        for i, t in enumerate(threads)
    ]
    pairs = [
        (r, f"t{i}") for i, t in enumerate(threads) for r in t["rephr"] if r and r.strip() not in ("", "*")
    ]
    random.Random(0).shuffle(pairs)
    return documents, pairs[:queries]


def lcqmc(queries: int) -> tuple[list[Document], list[tuple[str, str]]]:
    rows = [line.split("\t") for line in (DATA / "LCQMC" / "LCQMC.test.data").read_text("utf-8").splitlines()]
    corpus = sorted({r[1] for r in rows if len(r) == 3})
    ids = {text: f"s{i}" for i, text in enumerate(corpus)}
    positives = [(r[0], ids[r[1]]) for r in rows if len(r) == 3 and r[2] == "1"]
    random.Random(0).shuffle(positives)
    return [Document(ids[text], text) for text in corpus], positives[:queries]


def evaluate(collection, pairs: list[tuple[str, str]], options: dict) -> tuple[float, float, float, float]:
    for query, _ in pairs[:20]:  # untimed warm-up
        collection.search(query, k=10, **options)
    r1 = r5 = mrr = 0.0
    start = time.perf_counter()
    for query, relevant in pairs:
        ranking = [hit.document_id for hit in collection.search(query, k=10, **options)]
        if options.get("per_document") is False:
            ranking = list(dict.fromkeys(ranking))
        r1 += ranking[:1] == [relevant]
        r5 += relevant in ranking[:5]
        mrr += 1 / (ranking.index(relevant) + 1) if relevant in ranking else 0.0
    ms = (time.perf_counter() - start) * 1000 / len(pairs)
    n = len(pairs)
    return r1 / n, r5 / n, mrr / n, ms


def zh_unigrams(queries: int) -> None:
    import lancedb
    import pyarrow as pa
    from lancedb.index import FTS

    from qwembed.kb.keywords import index_terms, segment

    print("| data | indexed terms | R@1 | R@5 | MRR@10 |\n|---|---|---|---|---|")
    for name in ("LCQMC/LCQMC.test.data", "BQ/BQ.test.data"):
        rows = [line.split("\t") for line in (DATA / name).read_text(encoding="utf-8").splitlines()]
        corpus = sorted({r[1] for r in rows if len(r) == 3})
        positives = [(r[0], r[1]) for r in rows if len(r) == 3 and r[2] == "1"]
        random.Random(0).shuffle(positives)
        positives = positives[:queries]
        index = {text: i for i, text in enumerate(corpus)}
        for label, terms in (("jieba (before)", segment), ("jieba + CJK characters", index_terms)):
            db = lancedb.connect(str(scratch_dir("bench-zh-")))
            data = pa.table({"i": list(range(len(corpus))), "text": [terms(t) for t in corpus]})
            table = db.create_table("t", data=data)
            table.create_index("text", config=FTS(base_tokenizer="simple"))
            r1 = r5 = mrr = 0.0
            for query, relevant in positives:
                search = table.search(segment(query), query_type="fts").select(["i", "_score"]).limit(10)
                hits = [hit["i"] for hit in search.to_list()]
                gold = index[relevant]
                r1 += gold in hits[:1]
                r5 += gold in hits[:5]
                mrr += 1 / (hits.index(gold) + 1) if gold in hits else 0.0
            n = len(positives)
            data_name = f"{name.split('/')[0]} ({len(corpus)} docs)"
            print(f"| {data_name} | {label} | {r1 / n:.3f} | {r5 / n:.3f} | {mrr / n:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", choices=["stackfaq", "lcqmc", "zh-unigrams"])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--queries", type=int, default=None, help="default: stackfaq all, lcqmc 1000")
    parser.add_argument("--kb-dir", type=Path, default=None, help="keep the collection here (reused)")
    args = parser.parse_args()
    if args.data == "zh-unigrams":
        zh_unigrams(args.queries or 1000)
        return
    from qwembed.engine import Embedder

    documents, pairs = (stackfaq if args.data == "stackfaq" else lcqmc)(args.queries or 10**6)
    if args.data == "lcqmc" and args.queries is None:
        pairs = pairs[:1000]
    embedder = Embedder.load(args.model, dtype="float32")
    manager = KnowledgeBaseManager(args.kb_dir or scratch_dir("bench-kb-hybrid-"), lambda model: embedder)
    manager.create(args.data, args.model)
    collection = manager.get(args.data)
    if collection.stats().documents == 0:
        start = time.perf_counter()
        for _ in manager.add_stream(args.data, documents, batch_size=2048):
            pass
        print(f"ingested {len(documents)} documents in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(f"## {args.data}, {args.model}: {len(documents)} documents, {len(pairs)} queries, float32")
    print("| search | R@1 | R@5 | MRR@10 | ms/query |\n|---|---|---|---|---|")
    for label, options in CONFIGS:
        r1, r5, mrr, ms = evaluate(collection, pairs, options)
        print(f"| {label} | {r1:.3f} | {r5:.3f} | {mrr:.3f} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
