"""The one interface the evaluation tasks need from a model.

Tasks depend on this Protocol, not on the engine, so that a local model, a running qwembed
server and a third-party OpenAI-compatible service are evaluated by exactly the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np

InputType = Literal["query", "document"]


@runtime_checkable
class TextEmbedder(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors."""

    name: str

    @property
    def dimension(self) -> int:
        """Length of the vectors ``embed`` returns when ``dimensions`` is not given."""
        ...

    def embed(
        self,
        texts: Sequence[str],
        *,
        input_type: InputType | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        """float32 array ``(len(texts), dimensions or dimension)`` with unit-length rows.

        ``instruction`` only applies to queries; documents are embedded without one.
        """
        ...
