"""Retrieval sets: queries, a corpus and relevance judgements, from four layouts.

* ``builtin:NAME`` – a set shipped in ``qwembed/eval/data/NAME.jsonl`` (simple JSONL form);
* a BEIR folder – ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``;
* a StackFAQ folder or its ``stackExchange-FAQ.json``;
* a simple JSONL file – one query per line with its relevant and optional distractor texts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import DataError
from .hashing import sha256_file, sha256_path
from .textfile import iter_jsonl, iter_lines, require_str

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
STACKFAQ_FILE = "stackExchange-FAQ.json"


@dataclass(frozen=True)
class RetrievalSet:
    name: str
    path: str
    sha256: str
    #: doc id → text, in a fixed order (the order documents are embedded and ranked in)
    corpus: dict[str, str]
    #: query id → text; only queries with at least one relevant document
    queries: dict[str, str]
    #: query id → {doc id: graded relevance > 0}
    qrels: dict[str, dict[str, int]]
    #: query id → category, for per-category scores (empty when the set has none)
    categories: dict[str, str] = field(default_factory=dict)

    def head(self, n: int | None) -> RetrievalSet:
        """The first ``n`` queries with the full corpus; for quick runs and tests."""
        if n is None or n >= len(self.queries):
            return self
        keep = list(self.queries)[:n]
        return RetrievalSet(
            self.name,
            self.path,
            self.sha256,
            self.corpus,
            {q: self.queries[q] for q in keep},
            {q: self.qrels[q] for q in keep},
            {q: self.categories[q] for q in keep if q in self.categories},
        )


def builtin_names() -> list[str]:
    data = resources.files("qwembed.eval") / "data"
    return sorted(p.name[: -len(".jsonl")] for p in data.iterdir() if p.name.endswith(".jsonl"))


def builtin_path(name: str) -> Path:
    if name not in builtin_names():
        known = ", ".join(BUILTIN_PREFIX + n for n in builtin_names())
        raise DataError(BUILTIN_PREFIX + name, f"unknown built-in data set; available: {known}")
    # package data installed as plain files (setuptools package-data), so a real path exists
    return Path(str(resources.files("qwembed.eval") / "data" / f"{name}.jsonl"))


def is_retrieval_spec(spec: str) -> bool:
    """Whether ``spec`` names a retrieval set rather than a pair file."""
    if spec.startswith(BUILTIN_PREFIX):
        return True
    path = Path(spec)
    if path.is_dir() or path.name == STACKFAQ_FILE:
        return True
    if path.suffix.lower() == ".jsonl" and path.is_file():
        for _, line in iter_lines(path):
            try:
                first = json.loads(line)
            except json.JSONDecodeError:
                return False
            return isinstance(first, dict) and "query" in first
    return False


def load_retrieval(spec: str, *, split: str = "test") -> RetrievalSet:
    """Load any of the supported layouts; a DataError names the file and line at fault."""
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX) :]
        result = load_simple_jsonl(builtin_path(name))
        return _renamed(result, spec)
    path = Path(spec)
    if not path.exists():
        raise DataError(path, "no such file or directory")
    if path.is_dir():
        if (path / STACKFAQ_FILE).is_file():
            return load_stackfaq(path / STACKFAQ_FILE)
        if (path / "corpus.jsonl").is_file():
            return load_beir(path, split=split)
        raise DataError(path, f"directory has neither corpus.jsonl (BEIR layout) nor {STACKFAQ_FILE}")
    if path.name == STACKFAQ_FILE:
        return load_stackfaq(path)
    return load_simple_jsonl(path)


def _renamed(rs: RetrievalSet, name: str) -> RetrievalSet:
    return RetrievalSet(name, rs.path, rs.sha256, rs.corpus, rs.queries, rs.qrels, rs.categories)


# ---- simple JSONL -------------------------------------------------------------------------
def load_simple_jsonl(path: Path) -> RetrievalSet:
    """One query per line::

        {"query": "...", "positive": "..." | ["...", ...], "negatives": ["...", ...],
         "id": "optional query id", "category": "optional"}

    Every positive and negative text becomes a corpus document (identical texts are one
    document); each query is judged relevant to its positives only.
    """
    corpus: dict[str, str] = {}
    doc_of_text: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    categories: dict[str, str] = {}

    def doc_id(text: str) -> str:
        if text not in doc_of_text:
            doc_of_text[text] = f"d{len(doc_of_text) + 1}"
            corpus[doc_of_text[text]] = text
        return doc_of_text[text]

    for lineno, obj in iter_jsonl(path):
        query = require_str(path, lineno, obj, "query")
        qid = str(obj.get("id", f"q{lineno}"))
        if qid in queries:
            raise DataError(path, f"duplicate query id {qid!r}", lineno)
        positives = _text_list(path, lineno, obj, "positive", required=True)
        negatives = _text_list(path, lineno, obj, "negatives", required=False)
        queries[qid] = query
        qrels[qid] = {doc_id(t): 1 for t in positives}
        for text in negatives:
            doc_id(text)
        if "category" in obj:
            categories[qid] = require_str(path, lineno, obj, "category")
    if not queries:
        raise DataError(path, "no queries found (empty file?)")
    return RetrievalSet(path.name, str(path), sha256_file(path), corpus, queries, qrels, categories)


def _text_list(path: Path, lineno: int, obj: dict[str, Any], key: str, *, required: bool) -> list[str]:
    if key not in obj:
        if required:
            raise DataError(path, f"missing key {key!r}", lineno)
        return []
    value = obj[key]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
        raise DataError(path, f"{key!r} must be a non-empty string or a list of them", lineno)
    if required and not items:
        raise DataError(path, f"{key!r} is an empty list", lineno)
    return items


# ---- BEIR ---------------------------------------------------------------------------------
def load_beir(folder: Path, *, split: str = "test") -> RetrievalSet:
    """BEIR layout. Document text is ``title + " " + text`` as BEIR and MTEB join them."""
    corpus: dict[str, str] = {}
    corpus_file = folder / "corpus.jsonl"
    for lineno, obj in iter_jsonl(corpus_file):
        did = _id(corpus_file, lineno, obj)
        text = obj.get("text", "")
        title = obj.get("title", "") or ""
        if not isinstance(text, str) or not isinstance(title, str):
            raise DataError(corpus_file, "'title' and 'text' must be strings", lineno)
        joined = f"{title} {text}".strip()
        if not joined:
            raise DataError(corpus_file, f"document {did!r} has no title and no text", lineno)
        corpus[did] = joined
    if not corpus:
        raise DataError(corpus_file, "no documents found (empty file?)")

    queries_file = folder / "queries.jsonl"
    if not queries_file.is_file():
        raise DataError(queries_file, "no such file (BEIR layout needs queries.jsonl)")
    all_queries = {
        _id(queries_file, n, o): require_str(queries_file, n, o, "text") for n, o in iter_jsonl(queries_file)
    }

    qrels_file = folder / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        raise DataError(qrels_file, f"no such file (BEIR layout needs qrels/{split}.tsv)")
    qrels: dict[str, dict[str, int]] = {}
    judged: set[str] = set()
    for lineno, line in iter_lines(qrels_file):
        cols = line.split("\t")
        if len(cols) != 3:
            raise DataError(qrels_file, f"expected 3 tab-separated columns, found {len(cols)}", lineno)
        qid, did, score = (c.strip() for c in cols)
        if lineno == 1 and not _is_int(score):
            continue  # the header line "query-id corpus-id score"
        if not _is_int(score):
            raise DataError(qrels_file, f"relevance {score!r} is not an integer", lineno)
        if qid not in all_queries:
            raise DataError(qrels_file, f"query id {qid!r} is not in queries.jsonl", lineno)
        if did not in corpus:
            raise DataError(qrels_file, f"corpus id {did!r} is not in corpus.jsonl", lineno)
        judged.add(qid)
        if int(score) > 0:
            qrels.setdefault(qid, {})[did] = int(score)
    if not qrels:
        raise DataError(qrels_file, "no positive relevance judgements found")
    # A query judged only 0 has no document to find: every metric would be 0 for any model, so it
    # is left out (pytrec_eval would average it in as 0), and said so. Queries of other splits,
    # which queries.jsonl also holds, are simply not this split's.
    unanswerable = judged - qrels.keys()
    if unanswerable:
        log.warning(
            "%s: %d of the %d judged queries have no relevant document (every judgement 0) and are "
            "left out: %s",
            qrels_file,
            len(unanswerable),
            len(judged),
            ", ".join(sorted(unanswerable)[:5]) + (" …" if len(unanswerable) > 5 else ""),
        )
    queries = {q: all_queries[q] for q in all_queries if q in qrels}
    return RetrievalSet(folder.name, str(folder), sha256_path(folder), corpus, queries, qrels)


def _id(path: Path, lineno: int, obj: dict[str, Any]) -> str:
    if "_id" not in obj:
        raise DataError(path, "missing key '_id'", lineno)
    return str(obj["_id"])


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# ---- StackFAQ -----------------------------------------------------------------------------
def load_stackfaq(file: Path) -> RetrievalSet:
    """StackFAQ as in Karan & Šnajder (2018) and the data README: each thread (question and
    its answers) is a document; each rephrasing, minus the ``"*"`` placeholder, is a query
    whose one relevant document is its own thread."""
    try:
        root = json.loads(file.read_text(encoding="utf-8"))
        threads = root["root"]["qapair"]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(file, f"not a valid UTF-8 JSON file ({exc})") from None
    except (KeyError, TypeError):
        raise DataError(file, 'expected {"root": {"qapair": [...]}}') from None
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for t, thread in enumerate(threads, start=1):
        if not isinstance(thread, dict) or "question" not in thread:
            raise DataError(file, f"qapair #{t} has no 'question'")
        answers = thread.get("answer", [])
        answers = [answers] if isinstance(answers, str) else list(answers)  # one thread has a bare string
        did = f"thread{t}"
        corpus[did] = "\n".join([thread["question"], *answers])
        rephrasings = [
            r for r in thread.get("rephr", []) if isinstance(r, str) and r.strip() not in ("", "*")
        ]
        for r, text in enumerate(rephrasings, start=1):
            qid = f"thread{t}-r{r}"
            queries[qid] = text
            qrels[qid] = {did: 1}
    if not queries:
        raise DataError(file, "no rephrasings found")
    return RetrievalSet("StackFAQ", str(file), sha256_file(file), corpus, queries, qrels)
