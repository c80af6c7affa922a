"""Knowledge-base benchmarks (results go to docs/knowledge-base.md).

# store only, precomputed vectors: ingest rate, p50/p99 per mode exact and with ANN indexes,
# ANN recall@10 against numpy brute force, by id and by distance (ann-benchmarks' way), on
# held-out queries (random clustered vectors unless --vectors X.npy is given)
.venv/bin/python bench/bench_kb.py store --rows 100000 --dim 384
.venv/bin/python bench/bench_kb.py store --vectors real100k.npy --index IVF_FLAT,IVF_HNSW_SQ \
    --nprobes 16,32,64 --refine 0,4 --ef 0,100       # last 1,000 rows are the queries
# 1M real minilm vectors of distinct texts (pairs of shared sentences) + 1,000 held-out sentence
# queries: ~30 min on 2 cores, resumable; then the store run on them
.venv/bin/python bench/bench_kb.py real-vectors --rows 1000000 --out /tmp/kb1m
.venv/bin/python bench/bench_kb.py store --vectors /tmp/kb1m/real.npy --queries /tmp/kb1m/queries.npy \
    --exact-queries 20 --nprobes 0,16,32,64
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
import time
from pathlib import Path

import numpy as np

from common import scratch_dir

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


def _distinct_sentences() -> list[str]:
    """Every distinct sentence of the pair and STS sets (SOHU: under 200 characters), in file order."""
    seen: dict[str, None] = {}
    for path in sorted(DATA.glob("*/*.data")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for text in line.split("\t")[:2]:
                if text.strip():
                    seen.setdefault(text.strip(), None)
    for path in sorted(DATA.glob("SOHU-zh/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            for key in ("sentence1", "sentence2"):
                text = record.get(key, "").strip()
                if text and len(text) < 200:
                    seen.setdefault(text, None)
    return list(seen)


def bench_real_vectors(args: argparse.Namespace) -> None:
    """Real embeddings for the store benchmark: ``rows`` distinct texts, each two shared sentences
    drawn at random, and ``queries`` further sentences never part of a stored text. Written as
    ``real.npy`` (a memory map filled in steps, so an interrupted run resumes) and ``queries.npy``."""
    from qwembed.engine import Embedder

    sentences = _distinct_sentences()
    rng = random.Random(0)
    rng.shuffle(sentences)
    queries, pool = sentences[: args.queries], sentences[args.queries :]
    texts: set[str] = set()
    while len(texts) < args.rows:
        texts.add(pool[rng.randrange(len(pool))] + " " + pool[rng.randrange(len(pool))])
    ordered = sorted(texts)
    rng.shuffle(ordered)
    embedder = Embedder.load(args.model, device="cpu")
    print(f"{len(sentences):,} distinct sentences; {args.model}: {embedder.encoder.precision.describe()}")
    args.out.mkdir(parents=True, exist_ok=True)
    partial, final = args.out / "real.partial.npy", args.out / "real.npy"
    if partial.exists():
        out = np.lib.format.open_memmap(partial, mode="r+")
    else:
        np.save(args.out / "queries.npy", embedder.embed(queries))
        shape = (args.rows, embedder.dimension)
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
    start, done, step = time.perf_counter(), 0, 20_000
    for lo in range(0, args.rows, step):
        hi = min(args.rows, lo + step)
        if np.any(out[hi - 1]):  # written by an earlier run (unit vectors are never all zero)
            continue
        out[lo:hi] = embedder.embed(ordered[lo:hi], truncate=True)
        out.flush()
        done += hi - lo
        print(f"{hi:,} / {args.rows:,}  {done / (time.perf_counter() - start):.0f} texts/s", flush=True)
    del out
    partial.rename(final)
    print(f"wrote {final} and {args.out / 'queries.npy'}")


def _clustered(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 1,000 centres: closer to real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 1000, rows)] + 0.6 * rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.array(samples) * 1000, [50, 99])
    return float(p50), float(p99)


def _cell(samples: list[float]) -> str:
    return "{:.1f} / {:.1f}".format(*_percentiles(samples))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int = 10, chunk: int = 65_536):
    """Brute-force cosine top k in numpy (chunked matmul): ids (q × k) and cosines, best first."""
    q = _unit(queries).astype(np.float32)
    best_ids = np.zeros((len(q), 0), dtype=np.int64)
    best_sims = np.zeros((len(q), 0), dtype=np.float32)
    for lo in range(0, len(base), chunk):
        sims = q @ _unit(base[lo : lo + chunk]).T
        top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        ids = np.concatenate([best_ids, top + lo], axis=1)
        values = np.concatenate([best_sims, np.take_along_axis(sims, top, axis=1)], axis=1)
        keep = np.argsort(-values, axis=1, kind="stable")[:, :k]
        best_ids, best_sims = np.take_along_axis(ids, keep, axis=1), np.take_along_axis(values, keep, axis=1)
    return best_ids, best_sims


def recall_at_k(base, queries, truth_ids, truth_sims, found: list[list[int]], k: int = 10, eps: float = 1e-4):
    """(by id, by distance): the second as ann-benchmarks counts it — a returned row is a hit when
    its exact cosine to the query is ≥ the exact k-th best cosine − eps (ties make ids arbitrary)."""
    q = _unit(queries)
    by_id = by_distance = 0.0
    for n, rows in enumerate(found):
        rows = list(dict.fromkeys(rows))[:k]
        by_id += len(set(rows) & set(truth_ids[n].tolist())) / k
        if rows:
            cosines = _unit(base[rows]) @ q[n]
            by_distance += float(np.sum(cosines >= truth_sims[n, k - 1] - eps)) / k
    return by_id / len(found), by_distance / len(found)


def bench_store(args: argparse.Namespace) -> None:
    from qwembed.kb.keywords import segment
    from qwembed.kb.lance_store import LanceStore, default_nprobes, default_partitions
    from qwembed.kb.search import reciprocal_rank_fusion
    from qwembed.kb.store import ChunkBatch

    if args.vectors:
        vectors = np.load(args.vectors, mmap_mode="r")
        source = f"real vectors from {args.vectors.name}"
    else:  # synthetic; held-out queries are further draws around the same centres
        vectors = _clustered(args.rows + (0 if args.queries else args.holdout), args.dim)
        source = "clustered random vectors"
    if args.queries:
        queries = np.asarray(np.load(args.queries), dtype=np.float32)
        base = np.asarray(vectors, dtype=np.float32)
        held_out = f"{len(queries):,} held-out queries from {args.queries.name}"
    else:  # no separate query file: the last rows are the queries and are not stored
        base = np.asarray(vectors[: -args.holdout], dtype=np.float32)
        queries = np.asarray(vectors[-args.holdout :], dtype=np.float32)
        held_out = f"the last {args.holdout:,} rows held out as queries (not stored)"
    rows, dim = base.shape
    texts = _sentences(min(rows, 200_000))
    keywords = [segment(t) for t in texts]
    print(f"## store: {rows:,} chunks × {dim} dims, {source}; {held_out}", flush=True)

    store = LanceStore(scratch_dir("bench-kb-"), dim, ann_threshold=rows + 1)
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
                [texts[i % len(texts)] for i in range(lo, hi)],
                [keywords[i % len(keywords)] for i in range(lo, hi)],
                [""] * len(ids),
                ["{}"] * len(ids),
                ["h"] * len(ids),
                base[lo:hi],
            ),
        )
    elapsed = time.perf_counter() - start
    print(f"ingest: {elapsed:.1f} s, {rows / elapsed:,.0f} chunks/s (batches of {args.batch:,})")
    start = time.perf_counter()
    store.maintain()  # what the server does in the background: folds the new rows into the FTS index
    print(f"keyword index update (maintain): {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    truth_ids, truth_sims = exact_top_k(base, queries)
    print(f"ground truth (numpy brute force, {len(queries):,} queries): {time.perf_counter() - start:.1f} s")
    rng = random.Random(1)
    # keyword queries: the held-out vectors have no text, so stored chunks' terms are the queries
    terms = [keywords[rng.randrange(len(keywords))] for _ in range(len(queries))]

    modes = set(args.modes.split(","))

    def run(count: int) -> tuple[dict[str, list[float]], list[list[int]]]:
        timings: dict[str, list[float]] = {"dense": [], "keyword": [], "hybrid": []}
        found: list[list[int]] = []
        for n in range(-args.warmup, count):  # negative n: warm-up, not counted
            vector, term = queries[n], terms[n]  # warm-up: the last queries (timed later)
            t0 = time.perf_counter()
            dense = store.dense_search(vector, 10, [])
            t1 = time.perf_counter()
            if n >= 0:
                timings["dense"].append(t1 - t0)
                found.append([int(h.chunk_id[1:].split("#")[0]) for h in dense])
            if modes != {"dense"}:
                keyword = store.keyword_search(term, 20, [])
                t2 = time.perf_counter()
                reciprocal_rank_fusion([store.dense_search(vector, 20, []), keyword], 10)
                t3 = time.perf_counter()
                if n >= 0:
                    timings["keyword"].append(t2 - t1)
                    timings["hybrid"].append(t3 - t1)  # keyword list + dense list (depth 20) + fusion
        return timings, found

    header = "| index | partitions | nprobes | refine | ef | recall@10 id | recall@10 dist | dense p50 / p99 ms | keyword p50 / p99 ms | hybrid p50 / p99 ms |"  # noqa: E501
    lines = [header, "|" + "---|" * 10]

    def report(label: str, partitions: str, knobs: tuple, timings, found) -> None:
        by_id, by_distance = recall_at_k(base, queries, truth_ids, truth_sims, found)
        cells = [label, partitions, *map(str, knobs), f"{by_id:.3f}", f"{by_distance:.3f}"]
        cells += [_cell(timings[m]) if timings[m] else "–" for m in ("dense", "keyword", "hybrid")]
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], f"({len(found)} queries)", flush=True)

    if args.exact_queries:
        report("exact (no index)", "–", ("–", "–", "–"), *run(min(args.exact_queries, len(queries))))
    for index_type in args.index.split(","):
        partitions = args.partitions or default_partitions(index_type, rows)
        start = time.perf_counter()
        store.build_vector_index(index_type, partitions)
        took = time.perf_counter() - start
        print(f"{index_type} build ({partitions} partitions): {took:.1f} s", flush=True)
        for nprobes in _ints(args.nprobes):
            for refine in _ints(args.refine):
                for ef in _ints(args.ef) if "HNSW" in index_type else [0]:
                    store.nprobes, store.refine_factor, store.ef = nprobes or None, refine, ef
                    shown = nprobes or f"auto ({default_nprobes(index_type, rows)})"
                    report(index_type, str(partitions), (shown, refine, ef or "–"), *run(len(queries)))
    print("\n" + "\n".join(lines))


def bench_ingest(args: argparse.Namespace) -> None:
    from qwembed.engine import Embedder
    from qwembed.kb import Document, KnowledgeBaseManager

    threads = json.loads((DATA / "StackFAQ" / "stackExchange-FAQ.json").read_text(encoding="utf-8"))
    documents = [
        Document(f"t{i}", "\n\n".join(x for x in [t["question"], *t["answer"]] if x))
        for i, t in enumerate(threads["root"]["qapair"])
    ][: args.docs]
    embedder = Embedder.load(args.model)
    manager = KnowledgeBaseManager(scratch_dir("bench-kb-"), lambda model: embedder)
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
            db = lancedb.connect(str(scratch_dir("bench-zh-")))
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
    store.add_argument(
        "--queries", type=Path, default=None, help=".npy of held-out query vectors (else --holdout)"
    )
    store.add_argument("--holdout", type=int, default=1000, help="last rows used as queries, not stored")
    store.add_argument("--batch", type=int, default=10_000)
    store.add_argument("--exact-queries", type=int, default=100, help="timed without an index (0: skip)")
    store.add_argument("--warmup", type=int, default=10, help="untimed queries before each configuration")
    store.add_argument("--index", default="IVF_FLAT", help="comma-separated: IVF_FLAT,IVF_HNSW_SQ,IVF_PQ …")
    store.add_argument("--partitions", type=int, default=None, help="IVF partitions (default: the store's)")
    store.add_argument(
        "--nprobes", default="0", help="comma-separated values to sweep (0: the store's rule for the size)"
    )
    store.add_argument("--refine", default="0", help="refine factors to sweep (0: none)")
    store.add_argument("--ef", default="0", help="HNSW ef values to sweep (0: LanceDB's default)")
    store.add_argument(
        "--modes", default="dense,keyword,hybrid", help="'dense': time only dense search (sweeps)"
    )
    store.set_defaults(func=bench_store)
    real = commands.add_parser("real-vectors")
    real.add_argument("--rows", type=int, default=1_000_000)
    real.add_argument("--queries", type=int, default=1000)
    real.add_argument("--model", default="minilm")
    real.add_argument("--out", type=Path, default=Path("/tmp/kb1m"))
    real.set_defaults(func=bench_real_vectors)
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
