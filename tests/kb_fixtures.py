"""A tiny deterministic stand-in for ``qwembed.engine.Embedder`` so KB tests need no model.

Bag of words/CJK characters hashed into 64 dimensions: texts sharing words get similar vectors,
which is all the store, HTTP and crash tests need. One "token" per word or CJK character, plus
two special tokens, like a BERT tokenizer.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"[\u3400-\u9fff]|[A-Za-z0-9]+")


class StubEmbedder:
    def __init__(self, name: str = "stub", dimension: int = 64, max_tokens: int = 128):
        self.name = name
        self.dimension = dimension
        self.max_tokens = max_tokens
        self.calls = 0

    def _words(self, text: str) -> list[str]:
        return [w.lower() for w in _TOKEN.findall(text)]

    def tokenize(self, texts: Sequence[str], *, input_type=None, instruction=None, truncate=False):
        out = []
        for text in texts:
            ids = [101, *(zlib.crc32(w.encode()) % 30000 + 1000 for w in self._words(text)), 102]
            if len(ids) > self.max_tokens:
                if not truncate:
                    raise ValueError("too long")
                ids = [*ids[: self.max_tokens - 1], 102]
            out.append(ids)
        return out

    def embed(self, texts, *, input_type=None, instruction=None, dimensions=None, truncate=False):
        self.calls += 1
        single = isinstance(texts, str)
        rows = []
        for text in [texts] if single else texts:
            if not truncate and len(self._words(text)) + 2 > self.max_tokens:
                raise ValueError("too long")  # (as the real embedder's InputTooLongError)
            vector = np.full(self.dimension, 1e-3, dtype=np.float32)
            for word in self._words(text):
                vector[zlib.crc32(word.encode()) % self.dimension] += 1.0
            rows.append(vector)
        matrix = np.stack(rows)
        if dimensions:
            matrix = matrix[:, :dimensions]
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix[0] if single else matrix


class StubReranker:
    """The rerank interface (``tokenize_pairs``/``score_token_ids``): scores = shared words."""

    name = "stub-reranker"
    max_tokens = 512

    def tokenize_pairs(self, query, documents, instruction, truncate=True, max_tokens=None):
        words = set(query.lower().split())
        return [[1] * (1 + len(words & set(d.lower().split()))) for d in documents]

    def score_token_ids(self, batch):
        return np.array([len(ids) for ids in batch], dtype=np.float32)


def kb_app(manager):
    """A bare app with only the ``/v1/kb`` routes, the API's error shape and the key ``secret``:
    call it with ``TestClient(kb_app(manager), headers={"Authorization": "Bearer secret"})``."""
    from fastapi import FastAPI

    from qwembed.api.auth import KeyChecker
    from qwembed.api.errors import install_error_handlers
    from qwembed.api.kb_routes import build_kb_router

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_kb_router(manager, KeyChecker(["secret"])))
    return app
