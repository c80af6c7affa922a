"""What happens to vectors after the model: Matryoshka truncation and re-normalisation."""

from __future__ import annotations

import numbers

import numpy as np


class InvalidDimensionsError(ValueError):
    def __init__(self, dimensions: object, max_dimensions: int):
        super().__init__(
            f"dimensions must be an integer between 1 and {max_dimensions} for this model, got {dimensions!r}"
        )
        self.max_dimensions = max_dimensions


def check_dimensions(dimensions: int | None, max_dimensions: int) -> None:
    if dimensions is None:
        return
    if (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, numbers.Integral)  # (numpy's integers too)
        or not 1 <= dimensions <= max_dimensions
    ):
        raise InvalidDimensionsError(dimensions, max_dimensions)


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Keep the first ``dimensions`` components and re-normalise (Matryoshka representation).

    Qwen3-Embedding is trained for this from 32 dimensions up; other models accept it but lose
    more quality per dropped dimension.
    """
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    head = vectors[:, :dimensions]
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return (head / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32, copy=False)
