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
#: the largest size: an evaluation holds a dense float32 vector per text, several copies over (the
#: batches, the whole matrix, the task's slices): 2**16 is 256 KiB a text, 2.9 GB peak for STS-B's
#: 2,722 sentences, and STS-B's Spearman stops rising by 4,096 (0.5769; 0.5774 at 16,384), so it is
#: generous; hashing:100000000 asked for 16 GB a copy for 40 texts and was killed without a word
MAX_DIMENSION = 2**16
NGRAMS = (1, 2, 3)


class HashingEmbedder:
    def __init__(self, dimension: int = DEFAULT_DIMENSION, name: str | None = None):
        if not 1 <= dimension <= MAX_DIMENSION:
            raise ValueError(f"dimension must be between 1 and {MAX_DIMENSION}")
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
