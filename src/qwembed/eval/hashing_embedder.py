"""A model-free lexical baseline: hashed character n-grams.

It needs no weights, is fully deterministic across processes and machines, and is fast
enough for tests and smoke runs (``--model hashing`` or ``hashing:DIM``). As a baseline it
also shows how much of a task plain character overlap already solves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .protocol import InputType

DEFAULT_DIMENSION = 256
NGRAMS = (1, 2, 3)


class HashingEmbedder:
    def __init__(self, dimension: int = DEFAULT_DIMENSION, name: str | None = None):
        if dimension < 1:
            raise ValueError("dimension must be positive")
        self._dimension = dimension
        self.name = name or f"hashing:{dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    def _vector(self, text: str) -> np.ndarray:
        vec = np.zeros(self._dimension, np.float32)
        for n in NGRAMS:
            for i in range(len(text) - n + 1):
                # blake2b, not hash(): Python salts str hashes per process
                h = int.from_bytes(
                    hashlib.blake2b(text[i : i + n].encode(), digest_size=8).digest(), "little"
                )
                vec[h % self._dimension] += 1.0 if (h >> 63) & 1 else -1.0
        return vec

    def embed(
        self,
        texts: Sequence[str],
        *,
        input_type: InputType | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        if input_type == "query" and instruction:
            # the shape of Qwen3-Embedding's query prompt, so instructions change vectors
            texts = [f"Instruct: {instruction}\nQuery:{t}" for t in texts]
        out = (
            np.stack([self._vector(t) for t in texts])
            if texts
            else np.zeros((0, self._dimension), np.float32)
        )
        if dimensions is not None:
            out = out[:, :dimensions]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
