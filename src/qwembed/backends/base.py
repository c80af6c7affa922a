"""The small interfaces every model family implements.

An :class:`Encoder` is split in two halves on purpose:

* text → token ids (``format`` + ``tokenize`` + ``fit_token_ids``) is cheap, runs on the
  request's thread and gives the engine *exact* token counts for limits, usage and batching;
* token ids → vectors is the expensive part the engine's worker runs on batches it assembles
  from many requests: ``pool_token_ids`` gives the model's pooled vectors before normalisation,
  ``embed_token_ids`` those L2-normalised (unit vectors). The worker runs the first where a
  family has it, and each request normalises its own rows after it (engine/postprocess.py), as one
  batch mixes requests that want unit vectors with requests that do not (TEI's and vLLM's
  ``normalize: false``).

Because the model only ever sees token ids, a text's vector does not depend on which other
texts share its batch, and token-id inputs (as the OpenAI API allows) take the same path.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .framing import Framing, TruncationSide

InputType = Literal["query", "document"]
TokenIds = list[int]


def l2_normalize(vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 rows of ``vectors`` ``(n, d)`` scaled to unit length (an all-zero row stays zero),
    into ``out`` where given (``vectors`` itself: in place, when the caller owns them). One pass
    over the rows, no per-row Python; ``einsum`` makes no squared copy."""
    vectors = vectors.astype(np.float32, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    np.maximum(norms, np.finfo(np.float32).tiny, out=norms)
    return np.divide(vectors, norms[:, None], out=out)


def token_limit(model_limit: int, cap: int | None) -> int:
    """The most tokens an input (or a reranker's pair) may have: the model's limit, or a request's
    cap where that is smaller (vLLM's ``truncate_prompt_tokens``)."""
    return model_limit if cap is None else min(cap, model_limit)


class InputTooLongError(ValueError):
    """A text has more tokens than the model accepts and truncation was not allowed."""

    def __init__(self, n_tokens: int, max_tokens: int, index: int | None = None, message: str | None = None):
        self.n_tokens = n_tokens
        self.max_tokens = max_tokens
        self.index = index
        where = f"input[{index}]" if index is not None else "input"
        super().__init__(
            message
            or f"{where} has {n_tokens} tokens but the model accepts at most {max_tokens} "
            "(the end token included); shorten it or allow truncation "
            "(a request's truncate: true or the server's --auto-truncate; truncate=True in Python; "
            "qwembed embed --truncate)"
        )


class PairTooLongError(InputTooLongError):
    """A (query, document) pair, with the reranker's template, has more tokens than the model
    accepts and truncation was not allowed (TEI's ``truncate: false``). ``index``: the document's."""

    def __init__(self, n_tokens: int, max_tokens: int, index: int):
        super().__init__(
            n_tokens,
            max_tokens,
            index,
            f"document {index} (counting from 0) with the query and the model's template has {n_tokens} "
            f"tokens but the model accepts at most {max_tokens}; shorten it or allow truncation "
            "(truncate: true), which cuts the longer of query and document",
        )

    def at(self, offset: int) -> PairTooLongError:
        """The same error for a document ``offset`` places further on (a part of a longer list)."""
        return PairTooLongError(self.n_tokens, self.max_tokens, self.index + offset)


class PromptTooLongError(InputTooLongError):
    """The prompt around a text (an instruction, a model's query prompt, a reranker's template)
    takes so many of the model's tokens that none is left for the text itself. Truncation cuts
    only the text, so this is an error whether or not truncation was allowed. ``capped``: the limit
    was the request's own cap on a pair (``Reranker.tokenize_pairs``' ``max_tokens``), not the model's."""

    def __init__(
        self,
        n_tokens: int,
        max_tokens: int,
        *,
        instruction: bool,
        room_for: str = "the text",
        capped: bool = False,
    ):
        #: whether the request's instruction is to blame (else the model's own prompt)
        self.instruction = instruction
        #: whether the limit was the request's token cap
        self.capped = capped
        if instruction:
            what, advice = "the instruction, with the template and special tokens,", "shorten the instruction"
        else:
            what, advice = "the model's prompt, with its special tokens,", "raise the model's --max-tokens"
        limit = "the model's limit"
        if capped:
            limit = "the request's token cap"
            advice = "raise the cap" + (" or shorten the instruction" if instruction else "")
        super().__init__(
            n_tokens,
            max_tokens,
            message=f"{what} takes {n_tokens} tokens of {limit} of {max_tokens}, leaving no "
            f"room for {room_for}; {advice}",
        )


class InvalidTokenIdsError(ValueError):
    """Token ids outside the model's vocabulary."""


@dataclass(frozen=True)
class ModelCard:
    """What a client may learn about a served model."""

    name: str
    kind: Literal["embedding", "reranker"]
    backend: str
    dimension: int | None
    max_tokens: int
    source: str


class Encoder(ABC):
    """A text-embedding model: prompts, exact tokenisation and batched forward passes."""

    #: short backend name, e.g. ``"qwen3"``
    backend: str = "base"
    #: True when padding costs the forward pass (almost) nothing, so batches are budgeted by real
    #: tokens rather than ``rows × longest`` (see backends/packing.py)
    packed: bool = False

    @property
    def compute(self) -> str:
        """What the forward pass computes in, and where (results depend on it: bf16 matmuls move
        a retrieval score in its third decimal)."""
        return "float32 on cpu"

    def __init__(self, name: str, source: str, dimension: int, max_tokens: int, vocab_size: int):
        self.name = name
        self.source = source
        self.dimension = dimension
        self.max_tokens = max_tokens
        self.vocab_size = vocab_size
        #: special tokens around every input; subclasses set it once they know their tokenizer
        self.framing = Framing()

    # ---- text → token ids -------------------------------------------------------------
    @abstractmethod
    def format(self, text: str, input_type: InputType | None, instruction: str | None) -> str:
        """Apply the model's prompt for this input type (documents never get an instruction): the
        prompt goes before the text, so that truncation, which cuts the tail, cuts only the text."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> list[TokenIds]:
        """Token ids exactly as the model will see them, special tokens included, never cut."""

    def fit_token_ids(self, ids: Sequence[int]) -> TokenIds:
        """Complete caller-supplied token ids with the special tokens the model needs
        (for Qwen3: the end token, exactly once)."""
        return self.framing.fit(ids)

    def truncate(
        self,
        ids: TokenIds,
        max_tokens: int | None = None,
        *,
        side: TruncationSide = "right",
        prompt: Sequence[int] = (),
    ) -> TokenIds:
        """Cut a tokenised input to the model's ``max_tokens`` (or a smaller ``max_tokens``, a
        request's cap) while keeping its required special tokens.

        Prompts come first (``format``), so cutting the tail cuts the text, never the prompt, as
        long as the prompt leaves room for some text (``prompt_ids``; the engine checks).
        ``side="left"`` cuts the text's beginning instead (TEI's ``truncation_direction: Left``),
        and puts ``prompt`` (``prompt_ids``) back before the text's last tokens."""
        return self.framing.truncate(ids, token_limit(self.max_tokens, max_tokens), side=side, head=prompt)

    def prompt_ids(self, input_type: InputType | None, instruction: str | None) -> TokenIds:
        """The prompt's own tokens, as ``format`` puts it before a text, without the special
        tokens: the formatted empty text's content."""
        ids = self.tokenize([self.format("", input_type, instruction)])[0]
        return ids[len(self.framing.prefix) : len(ids) - len(self.framing.suffix)]

    # ---- token ids → vectors ----------------------------------------------------------
    def pool_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        """float32 array ``(len(batch), dimension)``: the model's pooled vectors, not normalised
        (what TEI answers with ``normalize: false``: MiniLM's mean of its token states, as its
        sentence-transformers Pooling module gives it; Qwen3's final hidden state at the last
        token). Each family implements it; an encoder that has unit vectors only implements
        ``embed_token_ids`` instead (``has_pooled_vectors`` is then False)."""
        raise NotImplementedError(f"{type(self).__name__} gives unit vectors only (embed_token_ids)")

    def embed_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        """float32 array ``(len(batch), dimension)`` of L2-normalised vectors: ``pool_token_ids``,
        normalised."""
        return l2_normalize(self.pool_token_ids(batch))

    @property
    def has_pooled_vectors(self) -> bool:
        """Whether ``pool_token_ids`` gives vectors before normalisation. False for an encoder
        that overrides ``embed_token_ids`` alone (one whose model normalises inside its forward,
        or a test's stand-in): the engine then serves what it returns as it is, and refuses
        ``normalize=False`` rather than answer unit vectors to it."""
        return type(self).pool_token_ids is not Encoder.pool_token_ids

    def check_token_ids(self, ids: Sequence[int]) -> None:
        # (a float would be cut to an integer, True read as 1, by the tensor the ids go into)
        wrong = [t for t in ids if isinstance(t, bool) or not isinstance(t, numbers.Integral)]
        if wrong:
            raise InvalidTokenIdsError(f"token ids must be integers, got {wrong[0]!r}")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidTokenIdsError(
                f"token id {bad[0]} is outside the model's vocabulary [0, {self.vocab_size})"
            )

    def card(self) -> ModelCard:
        return ModelCard(self.name, "embedding", self.backend, self.dimension, self.max_tokens, self.source)


class Reranker(ABC):
    """A model that scores (query, document) pairs; higher is more relevant."""

    backend: str = "base"
    #: whether the forward is padding-free (see Encoder.packed): batches are then budgeted in real tokens
    packed: bool = False

    def __init__(self, name: str, source: str, max_tokens: int):
        self.name = name
        self.source = source
        self.max_tokens = max_tokens

    @abstractmethod
    def tokenize_pairs(
        self,
        query: str,
        documents: Sequence[str],
        instruction: str | None,
        truncate: bool = True,
        max_tokens: int | None = None,
    ) -> list[TokenIds]:
        """One token sequence per pair, already fitted to the model's ``max_tokens``, or to the
        request's ``max_tokens`` where that is smaller (vLLM's ``truncate_prompt_tokens``): an
        over-long pair is cut longest first (tokens come off the longer of query and document until
        it fits), never the template around them, or with ``truncate=False`` is a
        :class:`PairTooLongError`; a template (with its instruction) that leaves no room for both is
        a :class:`PromptTooLongError`."""

    def pair_limit(self, max_tokens: int | None) -> int:
        """The tokens a pair may have: the model's limit, or a request's cap where that is smaller."""
        return token_limit(self.max_tokens, max_tokens)

    def cut_texts(self, texts: Sequence[str], max_tokens: int) -> list[str]:
        """Each text cut after its ``max_tokens``-th token, as text, the others unchanged (Cohere's
        ``max_tokens_per_doc``; backends/token_caps.py). Families without a tokenizer that knows
        character offsets cannot."""
        raise NotImplementedError(f"{type(self).__name__} cannot cut a text to a number of tokens")

    def logits_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        """float32 array ``(len(batch),)``: each pair's score before the model's final activation
        (TEI's ``raw_scores``, vLLM's ``use_activation: false``): Qwen3-Reranker's yes-minus-no
        logit, a cross-encoder's logit. Each family implements it; a reranker that has activated
        scores only implements ``score_token_ids`` instead (``has_logits`` is then False).

        The engine runs this, not ``score_token_ids``, and activates each request's scores after:
        logits read back from float32 probabilities are clipped (a probability of 1 - 1e-7 is a
        logit of 16.1, so every confident pair tied there), and ranking on them keeps apart pairs
        whose probabilities round to the same float."""
        raise NotImplementedError(f"{type(self).__name__} gives activated scores only (score_token_ids)")

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """The model's final activation on ``logits_token_ids``' output (identity unless a family
        has one), float32."""
        return np.asarray(logits, dtype=np.float32)

    def score_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        """float32 array ``(len(batch),)`` of relevance scores: ``logits_token_ids``, activated."""
        return self.activate(self.logits_token_ids(batch))

    @property
    def has_logits(self) -> bool:
        """Whether ``logits_token_ids`` gives scores before the activation. False for a reranker
        that overrides ``score_token_ids`` alone (a test's stand-in): its scores are then served as
        they are, raw or not."""
        return type(self).logits_token_ids is not Reranker.logits_token_ids

    def card(self) -> ModelCard:
        return ModelCard(self.name, "reranker", self.backend, None, self.max_tokens, self.source)
