"""Search quality on real data with the bundled MiniLM: StackFAQ threads as documents, their
rephrasings as queries (Karan & Šnajder 2018). Also the chunk limit with the real tokenizer."""

from __future__ import annotations

import json
import random

import pytest

from conftest import SHARED_DATA
from qwembed.kb import ChunkingSettings, Document, KnowledgeBaseManager
from qwembed.kb.chunking import chunk_text, embedder_token_counter

STACKFAQ = SHARED_DATA / "StackFAQ" / "stackExchange-FAQ.json"
QUERIES = 120  # a fixed sample of the ~1,200 rephrasings: ingest (~500 chunks) dominates the time


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    from qwembed.engine import Embedder

    return Embedder.load("minilm", dtype="float32")


@pytest.fixture(scope="module")
def stackfaq(minilm, tmp_path_factory):
    if not STACKFAQ.is_file():
        pytest.skip(f"StackFAQ data not found at {STACKFAQ}")
    threads = json.loads(STACKFAQ.read_text(encoding="utf-8"))["root"]["qapair"]
    documents = [
        Document(
            f"t{i}",
            "\n\n".join(x for x in [t["question"], *t["answer"]] if x),
            {"thread": i},
            source=STACKFAQ.name,
        )
        for i, t in enumerate(threads)
    ]
    queries = [
        (r, f"t{i}") for i, t in enumerate(threads) for r in t["rephr"] if r and r.strip() not in ("", "*")
    ]
    random.Random(0).shuffle(queries)
    manager = KnowledgeBaseManager(tmp_path_factory.mktemp("kb"), lambda model: minilm)
    manager.create("faq", "minilm")
    report = manager.add("faq", documents)
    assert len(report.added) == len(threads) and not report.failed
    return manager, queries[:QUERIES]


def _recall_at_5(manager, queries, mode: str) -> float:
    found = 0
    for query, relevant in queries:
        documents: list[str] = []
        for hit in manager.search("faq", query, k=20, mode=mode):
            if hit.document_id not in documents:
                documents.append(hit.document_id)
        found += relevant in documents[:5]
    return found / len(queries)


@pytest.mark.slow
def test_stackfaq_recall_at_5(stackfaq):
    manager, queries = stackfaq
    recall = {mode: _recall_at_5(manager, queries, mode) for mode in ("dense", "keyword", "hybrid")}
    print("StackFAQ Recall@5 (minilm):", recall)
    assert recall["hybrid"] >= 0.95
    assert recall["dense"] >= 0.9 and recall["keyword"] >= 0.6


def test_chunks_fit_the_real_tokenizer(minilm):
    count, overhead = embedder_token_counter(minilm)
    text = "人工智能改变了世界" * 200 + " " + "supercalifragilistic " * 300 + "Short one. " * 50
    chunks = chunk_text(text, ChunkingSettings(64, 8), count, overhead)
    ids = minilm.tokenize([c.text for c in chunks], input_type="document", truncate=True)
    assert all(len(x) <= 64 for x in ids)
    assert len(chunks) > 10
