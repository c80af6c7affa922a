"""Qwen3-Reranker served from its original causal-LM checkpoint, with the official recipe.

The model is a chat LM asked "does this document meet the query's requirements?"; the score is
P(yes) from a two-way softmax over the ``no`` / ``yes`` logits at the last position. Stacks that
load it as a sequence classifier, or forget the template, return scores that look random.

Three things keep it fast without changing a single score beyond float noise:

* only the last position goes through the LM head, and only the two rows of it we read
  (``hidden[:, -1] @ W[[no, yes]].T``) instead of ``batch × length × 151k`` logits;
* the padding-free forward the embedder uses (``packed_qwen3.py``): the pairs' real tokens only,
  the norms and RoPE in few passes, and on a GPU the element-wise steps fused into single kernels
  (``fused_pointwise.py``, compiled in the background after load). The system prompt, instruction
  and query that every pair of a request begins with run through its layers once per batch
  (``shared_prefixes.py``: 1.6× on the 0.6B shape on a CPU), and the system prompt and instruction
  once per server, their attention inputs kept between batches (``prefix_cache.py``);
* for checkpoints it does not cover (sliding-window layers), left padding with positions counted
  from each sequence's first real token, so a pair scores the same alone and inside a batch of
  longer pairs.

Precision is the embedders' (``precision.py``): bf16 on CUDA; under ``--dtype auto`` on CPUs with
bf16 units, mixed bf16 (1.6–2.5× on AMX) if no calibration pair's score moves by more than 0.01 from
float32 at load, float32 otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import expit
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from .base import PairTooLongError, PromptTooLongError, Reranker, TokenIds
from .device import load_transformers_model, resolve_device
from .fused_pointwise import fuse_in_background
from .packed_qwen3 import packed_qwen3_pooled, supports_packing
from .packing import PackedBatch
from .padding import pad_token_ids, positions_from_mask
from .precision import (
    FLOAT32_CPU,
    CalibrationResult,
    Precision,
    apply_checked_precision,
    calibration_probabilities,
    score_check,
)
from .prefix_cache import PrefixCache, TemplatePrefixes
from .qwen3_pointwise import EAGER, Pointwise
from .token_caps import cut_after_tokens

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
#: the official reference code caps sequences at 8192 tokens, well below the model's 32k window
DEFAULT_MAX_TOKENS = 8192


def task_of(instruction: str | None) -> str:
    """The request's instruction, or the official default when it gave none (null: the default;
    an empty one is refused before it gets here, engine/instructions.py)."""
    return DEFAULT_INSTRUCTION if instruction is None else instruction


def format_body(query: str, document: str, instruction: str | None = None) -> str:
    """The user turn between prefix and suffix; the document comes last, so cutting the tail of
    the body shortens the document."""
    return f"<Instruct>: {task_of(instruction)}\n<Query>: {query}\n<Document>: {document}"


def longest_first(first: int, second: int, budget: int) -> tuple[int, int]:
    """How many tokens of two texts to keep within ``budget``: tokens come off the longer one, one
    at a time, the second on ties, until both fit (the tokenizers' ``longest_first``, which
    sentence-transformers' cross-encoders and TEI use). A text no longer than half the budget is
    kept whole."""
    if first + second <= budget:
        return first, second
    if 2 * first <= budget:
        return first, budget - first
    if 2 * second <= budget:
        return budget - second, second
    return budget - budget // 2, budget // 2


class Qwen3Reranker(Reranker):
    backend = "qwen3-reranker"
    #: the packed forward's element-wise steps, as for the embedder (``qwen3.py``)
    pointwise: Pointwise = EAGER
    fusing: threading.Thread | None = None
    #: as for the embedders (``precision.py``): mixed bf16 on CPUs with bf16 units, checked at load
    precision: Precision = FLOAT32_CPU
    calibration: CalibrationResult | None = None
    #: the prompt's attention inputs between batches, set once ``load`` has settled the precision
    prefix_cache: PrefixCache | None = None

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        source: str,
        max_tokens: int | None = None,
    ):
        window = int(getattr(model.config, "max_position_embeddings", DEFAULT_MAX_TOKENS))
        limit = min(window, DEFAULT_MAX_TOKENS) if max_tokens is None else min(max_tokens, window)
        super().__init__(name=name, source=source, max_tokens=limit)
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        # The prefix, body and suffix are tokenised separately, as the reference code does: BPE
        # merges never cross the template's boundaries, so the template ids are fixed.
        self.prefix_ids: TokenIds = tokenizer(PREFIX, add_special_tokens=False)["input_ids"]
        self.suffix_ids: TokenIds = tokenizer(SUFFIX, add_special_tokens=False)["input_ids"]
        # The template with the default instruction must leave a token each for a query and a
        # document: a limit below that loaded, then failed the warm-up's first pair and stopped
        # the server after it said it was serving.
        template = len(self.prefix_ids) + len(self.suffix_ids) + len(self._encode([format_body("", "")])[0])
        if limit < template + 2:
            raise ValueError(
                f"max_tokens={limit} leaves no room for a query and a document: the reranker's "
                f"template with its default instruction takes {template} tokens; give at least "
                f"{template + 2} (--max-tokens applies to rerankers too)"
            )
        no_id, yes_id = (self._single_token_id(tokenizer, word) for word in ("no", "yes"))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else no_id
        # Only these two LM-head rows are ever read; keep them in float32 so the 2-way softmax
        # is at least as exact as the full-vocabulary recipe in the model's own dtype.
        head = model.get_output_embeddings()
        self._head_weight = head.weight[[no_id, yes_id]].detach().float()
        bias = getattr(head, "bias", None)
        self._head_bias = bias[[no_id, yes_id]].detach().float() if bias is not None else None
        self._body = model.base_model
        self.packed = supports_packing(self._body)
        #: the tokens every pair with an instruction begins with: the system prompt's, then the
        #: body's up to the query, but for its last few, which merge with some queries' first
        #: characters
        self.instruction_prefix = TemplatePrefixes(
            lambda instruction, query: [
                *self.prefix_ids,
                *tokenizer(format_body(query, "", instruction), add_special_tokens=False)["input_ids"],
            ]
        )

    def _body_budget(self, limit: int) -> int:
        """Tokens left for the body (instruction, query and document) in a pair of ``limit``."""
        return limit - len(self.prefix_ids) - len(self.suffix_ids)

    @staticmethod
    def _single_token_id(tokenizer: PreTrainedTokenizerBase, word: str) -> int:
        token_id = tokenizer.convert_tokens_to_ids(word)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no single token {word!r}; is this a Qwen3-Reranker?")
        return int(token_id)

    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        name: str | None = None,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        max_tokens: int | None = None,
        trust_remote_code: bool = False,
    ) -> Qwen3Reranker:
        dev = resolve_device(device)
        precision = Precision.plan(dtype, dev)
        model, tokenizer = load_transformers_model(
            AutoModelForCausalLM,
            name_or_path,
            device=dev,
            dtype=precision.load_dtype,
            trust_remote_code=trust_remote_code,
        )
        reranker = cls(
            model, tokenizer, name=name or name_or_path, source=name_or_path, max_tokens=max_tokens
        )
        # mixed bf16 only where its scores stay within 0.01 of float32's on the calibration pairs
        reranker.calibration = apply_checked_precision(
            reranker, reranker._body, precision, lambda: calibration_probabilities(reranker), score_check()
        )
        if reranker.packed:
            reranker.prefix_cache = PrefixCache()
            reranker.fusing = fuse_in_background(reranker._body, reranker.name, reranker.use_pointwise)
        return reranker

    def use_pointwise(self, steps: Pointwise) -> None:
        """Run the packed forward's element-wise steps with ``steps`` from the next batch on."""
        self.pointwise = steps

    def tokenize_pairs(
        self,
        query: str,
        documents: Sequence[str],
        instruction: str | None,
        truncate: bool = True,
        max_tokens: int | None = None,
    ) -> list[TokenIds]:
        if not documents:
            return []
        limit = self.pair_limit(max_tokens)
        budget = self._body_budget(limit)
        if self.prefix_cache is not None:
            self.prefix_cache.remember(self.instruction_prefix(task_of(instruction)))
        bodies = [format_body(query, document, instruction) for document in documents]
        encoded = self._encode(bodies)
        query_offsets: list[tuple[int, int]] | None = None  # the query's tokens, once one is needed
        for index, ids in enumerate(encoded):
            if len(ids) > budget:
                if not truncate:
                    total = len(self.prefix_ids) + len(ids) + len(self.suffix_ids)
                    raise PairTooLongError(total, limit, index)
                if query_offsets is None:
                    query_offsets = self._offsets(query)
                encoded[index] = self._fit(
                    ids, query, query_offsets, documents[index], instruction, limit, budget
                )
        # the prefix and suffix are added after, so the question the model answers always survives
        return [[*self.prefix_ids, *ids, *self.suffix_ids] for ids in encoded]

    def cut_texts(self, texts: Sequence[str], max_tokens: int) -> list[str]:
        return cut_after_tokens(self.tokenizer, texts, max_tokens)

    def _encode(self, bodies: list[str]) -> list[TokenIds]:
        return self.tokenizer(bodies, add_special_tokens=False, verbose=False)["input_ids"]

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        """Where each of ``text``'s tokens begins and ends, in characters, tokenised alone."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return encoded["offset_mapping"]

    def _fit(
        self,
        body: TokenIds,
        query: str,
        query_offsets: list[tuple[int, int]],
        document: str,
        instruction: str | None,
        limit: int,
        budget: int,
    ) -> TokenIds:
        """An over-long pair's body cut to ``budget`` (the pair's ``limit`` less the template's
        prefix and suffix), longest first: the longer of query and document loses tokens until
        both fit, so a long query never pushes the document out (nor a long document the query),
        and the template — instruction included — is never cut.

        Where the query is kept whole this is the reference's cut (``truncation=True`` on the
        body: the document's tail). Where the query is cut too, it is cut as text, after the last
        token it keeps, and the body tokenised again and cut as the reference cuts: the pair is
        then exactly the official recipe's tokens for the shortened query, not ids spliced across
        the template's boundaries (BPE merges a query's last characters with the newline after
        it). A whole document that the new body no longer fits gives the query another token or
        two instead."""
        n_query, n_document = len(query_offsets), len(self._offsets(document))
        template = len(body) - n_query - n_document  # (± a token where the parts merge)
        room = budget - template
        if room < 2:  # not one token each of query and document
            total = len(self.prefix_ids) + template + len(self.suffix_ids)
            raise PromptTooLongError(
                total,
                limit,
                instruction=instruction is not None,
                room_for="the query and document",
                capped=limit < self.max_tokens,
            )
        keep_query, keep_document = longest_first(n_query, n_document, room)
        if keep_query >= n_query:
            return body[:budget]
        while True:
            cut = query[: query_offsets[keep_query - 1][1]] if keep_query > 0 else ""
            (ids,) = self._encode([format_body(cut, document, instruction)])
            over = len(ids) - budget
            # the document's tail goes where it was to be cut anyway; a whole document stays whole
            if over <= 0 or keep_document < n_document or keep_query == 0:
                return ids[:budget]
            keep_query = max(0, keep_query - over)

    @torch.inference_mode()
    def logits_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        """Each pair's ``yes`` logit minus its ``no`` logit: the official P(yes), a softmax over
        the two, is this difference's sigmoid (``activate``)."""
        if not batch:
            return np.zeros(0, dtype=np.float32)
        with self.precision.autocast():
            hidden = self._last_hidden(batch)
        logits = hidden.float() @ self._head_weight.T  # (n, 2): [no, yes]
        if self._head_bias is not None:
            logits = logits + self._head_bias
        return (logits[:, 1] - logits[:, 0]).cpu().numpy().astype(np.float32)

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """P(yes): the sigmoid of the logit difference, in float64 so that it saturates only where
        float32 itself cannot tell the probability from 1."""
        return expit(np.asarray(logits, dtype=np.float64)).astype(np.float32)

    def _last_hidden(self, batch: Sequence[TokenIds]) -> torch.Tensor:
        """The final-norm hidden state at each pair's last position (where the answer comes)."""
        if self.packed:
            rows = list(batch)
            packed = PackedBatch.of(rows, len(rows), max(len(ids) for ids in rows), causal=True)
            return packed_qwen3_pooled(self._body, packed, self.pointwise, self.prefix_cache)
        # left padding: the answer position is the last column
        input_ids, mask = pad_token_ids(batch, self.pad_id, left=True)
        positions = positions_from_mask(mask)
        hidden = self._body(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=False,
        ).last_hidden_state
        return hidden[:, -1]
