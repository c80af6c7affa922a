"""What happens to vectors after the model: Matryoshka truncation, then L2 normalisation.

The engine's forward passes give pooled vectors (``Encoder.pool_token_ids``), not unit ones,
because a batch mixes requests: each request's rows are finished here, after the batch, with its
own ``dimensions`` and ``normalize`` (``finish``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np

from ..backends.base import Encoder, TokenIds, l2_normalize


class NormalizeUnsupportedError(ValueError):
    """``normalize=False`` for a model that gives unit vectors only (``Encoder.has_pooled_vectors``)."""

    def __init__(self, model: str):
        super().__init__(
            f"unnormalised vectors (normalize: false) are not available from {model}: its forward "
            "pass returns unit-length (L2-normalised) vectors only; ask for normalised ones (the default)"
        )


class InvalidDimensionsError(ValueError):
    def __init__(self, dimensions: object, max_dimensions: int):
        super().__init__(
            f"dimensions must be an integer between 1 and {max_dimensions} for this model, got {dimensions!r}"
        )
        self.max_dimensions = max_dimensions


class DimensionsTypeError(InvalidDimensionsError, TypeError):
    """``dimensions`` that is not an integer (``64.0``, ``True``, ``"64"``): a ``TypeError``, as the
    library's other wrong types are, and still an ``InvalidDimensionsError``."""


def check_dimensions(dimensions: int | None, max_dimensions: int) -> None:
    if dimensions is None:
        return
    # (numpy's integers are Integral too; a bool is an int to Python but never a size)
    if isinstance(dimensions, bool) or not isinstance(dimensions, numbers.Integral):
        raise DimensionsTypeError(dimensions, max_dimensions)
    if not 1 <= dimensions <= max_dimensions:
        raise InvalidDimensionsError(dimensions, max_dimensions)


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Keep the first ``dimensions`` components of unit vectors and re-normalise (Matryoshka
    representation); ``vectors`` itself without a cut.

    Qwen3-Embedding is trained for this from 32 dimensions up; other models accept it but lose
    more quality per dropped dimension."""
    return finish(vectors, dimensions, pooled=False)


def check_normalize(encoder: Encoder, normalize: bool) -> None:
    """``normalize=False`` needs the model's pooled vectors; unit vectors would ignore it silently."""
    if not isinstance(normalize, bool | np.bool_):  # (a library caller's "false" would read as true)
        raise TypeError(f"normalize must be True or False, not {type(normalize).__name__}")
    if not normalize and not encoder.has_pooled_vectors:
        raise NormalizeUnsupportedError(encoder.name)


def embedding_forward(encoder: Encoder) -> Callable[[Sequence[TokenIds]], np.ndarray]:
    """What the engine runs on a batch: the pooled vectors, which ``finish`` then completes per
    request; the unit vectors of an encoder that has no others."""
    return encoder.pool_token_ids if encoder.has_pooled_vectors else encoder.embed_token_ids


def finish(
    vectors: np.ndarray, dimensions: int | None = None, *, normalize: bool = True, pooled: bool = True
) -> np.ndarray:
    """One request's vectors as answered, from what ``embedding_forward`` gave (``pooled``: the
    encoder's ``has_pooled_vectors``): the first ``dimensions`` components (Matryoshka), then
    L2-normalised unless ``normalize`` is False (the cut is then left as it is, as vLLM does).
    One pass: the cut first, so a cut vector is normalised once. Unit vectors (``pooled`` False)
    are normalised again only once cut, as before pooled vectors existed.

    ``vectors`` must be the caller's own (a request's stacked rows): without a cut they are
    normalised in place."""
    cut = dimensions is not None and dimensions != vectors.shape[1]
    head = vectors[:, :dimensions] if cut else vectors
    if normalize and (pooled or cut):
        # (a cut is a strided view: normalising it writes a new, contiguous array)
        own = not cut and head.dtype == np.float32 and head.flags.writeable
        return l2_normalize(head, out=head if own else None)
    return np.ascontiguousarray(head, dtype=np.float32)
