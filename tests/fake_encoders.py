"""Encoders with controlled timing, for tests of queueing, cancellation and overload, and a reranker
whose scores are easy to predict."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from qwembed.backends import Encoder, InputType, Reranker, TokenIds


class SlowEncoder(Encoder):
    """Characters as token ids; each batch takes ``delay`` seconds; remembers what it embedded."""

    backend = "test"

    def __init__(self, delay: float):
        super().__init__(name="slow", source="test", dimension=4, max_tokens=1000, vocab_size=0x110000)
        self.delay = delay
        self.seen: list[TokenIds] = []

    def format(self, text: str, input_type: InputType | None, instruction: str | None) -> str:
        return text

    def tokenize(self, texts: Sequence[str]) -> list[TokenIds]:
        return [[ord(c) for c in text] for text in texts]

    def embed_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        time.sleep(self.delay)
        self.seen.extend(batch)
        return np.tile(np.array([1.0, 0, 0, 0], dtype=np.float32), (len(batch), 1))


class LengthReranker(Reranker):
    """Characters as token ids; a pair scores its length."""

    backend = "test"

    def __init__(self, name: str = "R"):
        super().__init__(name=name, source="test", max_tokens=1000)

    def tokenize_pairs(
        self,
        query: str,
        documents: Sequence[str],
        instruction: str | None,
        truncate: bool = True,
        max_tokens: int | None = None,
    ) -> list[TokenIds]:
        return [[ord(c) for c in query + document] for document in documents]

    def score_token_ids(self, batch: Sequence[TokenIds]) -> np.ndarray:
        return np.array([len(ids) for ids in batch], dtype=np.float32)
