"""Embedding many texts through a TextEmbedder: de-duplicated, batched, with progress."""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    #: texts whose vectors came from an ``EmbeddingCache`` instead (not in ``texts`` nor the rate)
    reused: int = 0

    def as_dict(self) -> dict[str, float]:
        rate = self.texts / self.seconds if self.seconds > 0 else 0.0
        return {
            "embed_s": round(self.seconds, 3),
            "texts_embedded": self.texts,
            "texts_reused": self.reused,
            "texts_per_s": round(rate, 1),
        }


#: what ``encode`` hands ``embed`` besides the texts, as sorted (name, value) pairs
EmbedSettings = tuple[tuple[str, object], ...]


class EmbeddingCache:
    """The vectors one model gave during one run, by the embedding settings and the text.

    One ``--train`` serving several ``--data`` handed the model the same training pairs once per
    set. A vector depends only on the model, the text and the options passed to ``embed`` (not on
    its batch-mates: ``encode`` already relies on that to de-duplicate), so those are the key: the
    options are every keyword ``encode`` passes (``input_type``, ``instruction``, ``truncate``),
    taken from the call itself so that a new one cannot be left out of the key; the model (its
    weights, precision, device) is the one object the cache is bound to, and ``encode`` refuses a
    cache of another. Owned by whoever runs the model (the CLI: one per model), never global, so
    its vectors go when that model's evaluation ends.
    """

    def __init__(self, model: TextEmbedder) -> None:
        self.model = model
        self._vectors: dict[EmbedSettings, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return sum(len(by_text) for by_text in self._vectors.values())

    def known(self, settings: EmbedSettings, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The vectors of those ``texts`` already embedded with exactly ``settings``."""
        by_text = self._vectors.get(settings, {})
        return {t: by_text[t] for t in texts if t in by_text}

    def add(self, settings: EmbedSettings, texts: Sequence[str], vectors: np.ndarray) -> None:
        by_text = self._vectors.setdefault(settings, {})
        by_text.update(zip(texts, vectors, strict=True))


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
    cache: EmbeddingCache | None = None,
    remember: bool = True,
) -> np.ndarray:
    """float32 ``(len(texts), d)`` unit rows; each distinct text is embedded once.

    Pair sets repeat sentences a lot (LCQMC: one in five), and an embedding does not depend
    on its batch-mates, so de-duplicating is free accuracy-wise and saves real time. With a
    ``cache``, texts it holds for these settings are not embedded again, and (``remember``) the
    ones embedded now are added to it.
    """
    if cache is not None and cache.model is not model:
        raise ValueError(f"an embedding cache of model {cache.model.name!r} was given {model.name!r}")
    unique = list(dict.fromkeys(texts))
    # what embed is given is the cache's key, from the very dict it is given (nothing left out)
    options: dict[str, Any] = {"input_type": input_type, "instruction": instruction}
    options.update(truncation_kwargs(model))
    settings: EmbedSettings = tuple(sorted(options.items()))
    known = cache.known(settings, unique) if cache is not None else {}
    todo = [t for t in unique if t not in known]
    chunks: list[np.ndarray] = []
    start = time.perf_counter()
    with tqdm(
        total=len(todo), desc=f"{model.name}: {desc}", unit="text", disable=not progress, leave=False
    ) as bar:
        for lo in range(0, len(todo), batch_size):
            batch = todo[lo : lo + batch_size]
            vectors = np.asarray(model.embed(batch, **options))
            if vectors.ndim != 2 or vectors.shape[0] != len(batch):
                raise EvalError(
                    f"model {model.name!r} returned an array of shape {vectors.shape} for {len(batch)} texts"
                )
            chunks.append(vectors.astype(np.float32, copy=False))
            bar.update(len(batch))
    if stats is not None:
        stats.seconds += time.perf_counter() - start
        stats.texts += len(todo)
        stats.reused += len(known)
    embedded = [np.concatenate(chunks)] if chunks else []
    if embedded and cache is not None and remember:
        cache.add(settings, todo, embedded[0])
    if not unique:
        return np.zeros((0, model.dimension), np.float32)
    parts = [*embedded, np.stack(list(known.values()))] if known else embedded
    matrix = parts[0] if len(parts) == 1 else np.concatenate(parts)
    index = {t: i for i, t in enumerate([*todo, *known])}
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
