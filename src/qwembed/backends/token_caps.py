"""A request's cap on one text's tokens, below the model's limit: Cohere v2's ``max_tokens_per_doc``
("long documents will be truncated to the specified number of tokens") and ``max_tokens_per_query``.

The cut is made in the text, not in token ids: a reranker tokenises a pair as one sequence (with
Qwen3-Reranker's template around it, or as a tokenizer's text pair), where a document's first and
last tokens can merge with what surrounds them. So the text is cut after its N-th token's last
character, and the pair is built from the shorter text as from any other."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase


def cut_after_tokens(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_tokens: int) -> list[str]:
    """Each text with more than ``max_tokens`` tokens (tokenised alone, no special tokens) cut
    after its ``max_tokens``-th token; the others unchanged. The cut text has at most
    ``max_tokens`` tokens: where a byte-level tokenizer spreads one character over several tokens
    and the cap falls between them, the cut falls before that character."""
    if max_tokens < 1:
        raise ValueError(f"a token cap must be at least 1, got {max_tokens}")
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    cut = list(texts)
    for index, offsets in enumerate(encoded["offset_mapping"]):
        if len(offsets) > max_tokens:
            cut[index] = _cut(tokenizer, texts[index], offsets, max_tokens)
    return cut


def _cut(
    tokenizer: PreTrainedTokenizerBase, text: str, offsets: list[tuple[int, int]], max_tokens: int
) -> str:
    """The longest prefix ending at one of the first ``max_tokens`` tokens' ends that tokenises to
    at most ``max_tokens`` tokens (almost always the first one tried)."""
    for keep in range(max_tokens, 0, -1):
        candidate = text[: offsets[keep - 1][1]]
        if len(tokenizer(candidate, add_special_tokens=False, verbose=False)["input_ids"]) <= max_tokens:
            return candidate
    return ""
