"""The library rerank call: score every (query, document) pair, best first.

Synchronous and single-request on purpose (scripts, evaluation, the knowledge base); it uses the
same token-budget planner as embeddings. A pair's score does not depend on its batch-mates in
float32; in bf16 it moves within the dtype's rounding (up to ~1e-3 across batch compositions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..backends.base import Reranker, TokenIds
from .batching import default_batch_tokens, plan_batches
from .inputs import check_texts, check_token_cap, text_list
from .instructions import check_instruction

DEFAULT_MAX_BATCH_SIZE = 64


@dataclass(frozen=True)
class TokenCaps:
    """A request's caps below the model's own limit, in tokens; None: no cap. The cuts they make
    come before the model's own fitting (which still cuts an over-long pair longest first).

    ``query`` and ``document`` cut the query and each document as text after their N-th token
    (Cohere's ``max_tokens_per_query`` and ``max_tokens_per_doc``; backends/token_caps.py);
    ``pair`` fits each whole pair, template included, to N tokens instead of the model's limit
    (vLLM's ``truncate_prompt_tokens``)."""

    query: int | None = None
    document: int | None = None
    pair: int | None = None

    def __post_init__(self) -> None:
        for name in ("query", "document", "pair"):
            check_token_cap(getattr(self, name), f"a {name} token cap")

    def cut_query(self, reranker: Reranker, query: str) -> str:
        return query if self.query is None else reranker.cut_texts([query], self.query)[0]

    def cut_documents(self, reranker: Reranker, documents: Sequence[str]) -> list[str]:
        return list(documents) if self.document is None else reranker.cut_texts(documents, self.document)


NO_CAPS = TokenCaps()


@dataclass(frozen=True)
class RerankResult:
    """``index`` is the document's position in the request; ``score`` its relevance."""

    index: int
    score: float


def checked_pair_inputs(query: str, documents: Iterable[str], instruction: str | None) -> list[str]:
    """A rerank call's inputs checked, the library's and the server's alike: types (a string of
    documents would be scored character by character), valid Unicode, a non-blank instruction.
    Returns the documents as a list (a generator is read once, here)."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, not {type(query).__name__}")
    documents = text_list(documents, "documents")
    check_texts([query], name="query")
    check_texts(documents, name="documents")
    check_instruction(instruction)
    return documents


def score_pairs(
    reranker: Reranker,
    query: str,
    documents: Sequence[str],
    *,
    instruction: str | None = None,
    max_batch_tokens: int | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    truncate: bool = True,
    caps: TokenCaps = NO_CAPS,
    raw: bool = False,
) -> np.ndarray:
    """float32 scores in the documents' order (what evaluation wants before sorting); with
    ``raw`` the scores before the model's activation (logits). The query and documents are first
    cut to ``caps``; then an over-long pair is cut longest first, or with ``truncate=False`` is a
    ``PairTooLongError``."""
    return _activated(
        reranker,
        _outputs(reranker, query, documents, instruction, max_batch_tokens, max_batch_size, truncate, caps),
        raw,
    )


def _outputs(
    reranker: Reranker,
    query: str,
    documents: Sequence[str],
    instruction: str | None,
    max_batch_tokens: int | None,
    max_batch_size: int,
    truncate: bool,
    caps: TokenCaps,
) -> np.ndarray:
    """What ``reranking_forward`` gives for every pair, in the documents' order."""
    documents = checked_pair_inputs(query, documents, instruction)
    query, documents = caps.cut_query(reranker, query), caps.cut_documents(reranker, documents)
    sequences = reranker.tokenize_pairs(query, documents, instruction, truncate, caps.pair)
    outputs = np.zeros(len(sequences), dtype=np.float32)
    lengths = [len(ids) for ids in sequences]
    budget = max_batch_tokens or default_batch_tokens(reranker)
    # duck-typed rerankers (a remote one, a test stub) need not say; padded is the safe budget
    padded = not getattr(reranker, "packed", False)
    run = reranking_forward(reranker)
    for batch in plan_batches(lengths, budget, max_batch_size, padded=padded):
        outputs[batch] = run([sequences[i] for i in batch])
    return outputs


def reranking_forward(reranker: Reranker) -> Callable[[Sequence[TokenIds]], np.ndarray]:
    """What the engine runs on a batch of pairs: the logits, which each request then activates or
    not (``ranked``); the scores of a reranker that has no logits."""
    return reranker.logits_token_ids if _has_logits(reranker) else reranker.score_token_ids


def _has_logits(reranker: Reranker) -> bool:
    return getattr(reranker, "has_logits", False)  # (duck-typed rerankers have scores only)


def _activated(reranker: Reranker, outputs: np.ndarray, raw: bool) -> np.ndarray:
    return reranker.activate(outputs) if _has_logits(reranker) and not raw else outputs


def ranked(reranker: Reranker, outputs: np.ndarray, top_n: int | None, raw: bool) -> list[RerankResult]:
    """``reranking_forward``'s outputs for a request's pairs ranked, best first, and reported as the
    model's scores, or with ``raw`` as logits. The ranking is on the logits: a confident pair's
    probability rounds to 1.0 in float32, which would tie it with every other."""
    order = rank(outputs, top_n)
    if not order or raw or not _has_logits(reranker):
        return order
    scores = reranker.activate(outputs[[result.index for result in order]])
    return [RerankResult(result.index, float(score)) for result, score in zip(order, scores, strict=True)]


def rank(scores: Sequence[float] | np.ndarray, top_n: int | None = None) -> list[RerankResult]:
    """Best first; equal scores keep the documents' order so results are deterministic."""
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return [RerankResult(i, float(scores[i])) for i in order[:top_n]]


def rerank(
    reranker: Reranker,
    query: str,
    documents: Sequence[str],
    *,
    instruction: str | None = None,
    top_n: int | None = None,
    max_batch_tokens: int | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    truncate: bool = True,
    caps: TokenCaps = NO_CAPS,
    raw: bool = False,
) -> list[RerankResult]:
    """Score every document against ``query`` and return the ``top_n`` best (all by default);
    ``raw``: scores before the model's activation (logits)."""
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    outputs = _outputs(
        reranker, query, documents, instruction, max_batch_tokens, max_batch_size, truncate, caps
    )
    return ranked(reranker, outputs, top_n, raw)
