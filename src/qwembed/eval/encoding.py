"""Embedding many texts through a TextEmbedder: de-duplicated, batched, with progress."""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from .errors import EvalError
from .protocol import InputType, TextEmbedder

DEFAULT_BATCH_SIZE = 64


@dataclass
class EncodeStats:
    """Accumulated embedding cost of one model on one task."""

    seconds: float = 0.0
    texts: int = 0

    def as_dict(self) -> dict[str, float]:
        rate = self.texts / self.seconds if self.seconds > 0 else 0.0
        return {
            "embed_s": round(self.seconds, 3),
            "texts_embedded": self.texts,
            "texts_per_s": round(rate, 1),
        }


def encode(
    model: TextEmbedder,
    texts: Sequence[str],
    *,
    input_type: InputType | None = None,
    instruction: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    desc: str = "embedding",
    stats: EncodeStats | None = None,
    progress: bool = True,
) -> np.ndarray:
    """float32 ``(len(texts), d)`` unit rows; each distinct text is embedded once.

    Pair sets repeat sentences a lot (LCQMC: one in five), and an embedding does not depend
    on its batch-mates, so de-duplicating is free accuracy-wise and saves real time.
    """
    unique = list(dict.fromkeys(texts))
    extra = truncation_kwargs(model)
    index = {t: i for i, t in enumerate(unique)}
    chunks: list[np.ndarray] = []
    start = time.perf_counter()
    with tqdm(
        total=len(unique), desc=f"{model.name}: {desc}", unit="text", disable=not progress, leave=False
    ) as bar:
        for lo in range(0, len(unique), batch_size):
            batch = unique[lo : lo + batch_size]
            vectors = np.asarray(model.embed(batch, input_type=input_type, instruction=instruction, **extra))
            if vectors.ndim != 2 or vectors.shape[0] != len(batch):
                raise EvalError(
                    f"model {model.name!r} returned an array of shape {vectors.shape} for {len(batch)} texts"
                )
            chunks.append(vectors.astype(np.float32, copy=False))
            bar.update(len(batch))
    if stats is not None:
        stats.seconds += time.perf_counter() - start
        stats.texts += len(unique)
    if not chunks:
        return np.zeros((0, model.dimension), np.float32)
    matrix = np.concatenate(chunks)
    return matrix[[index[t] for t in texts]]


def truncation_kwargs(model: TextEmbedder) -> dict[str, bool]:
    """``truncate=True`` for embedders that take it (the local Embedder refuses over-long
    inputs by default): evaluations cut long documents to the model's limit, as
    sentence-transformers and MTEB do, instead of failing on the first long one."""
    try:
        params = inspect.signature(model.embed).parameters
    except (TypeError, ValueError):
        return {}
    return {"truncate": True} if "truncate" in params else {}


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero) in float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
