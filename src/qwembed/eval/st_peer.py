"""``st:MODEL`` — sentence-transformers' own ``encode`` as a peer to compare qwembed against.

The same model through the library most users start from, in float32 with its defaults (batches of
32), so ``qwembed bench --model st:minilm --model minilm`` puts the peer and qwembed side by side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..engine.postprocess import truncate_dimensions
from .protocol import InputType

PREFIX = "st:"


class SentenceTransformersPeer:
    def __init__(self, model: str, *, device: str = "auto"):
        from sentence_transformers import SentenceTransformer

        from ..backends.registry import bundled_minilm_path

        source = str(bundled_minilm_path()) if model == "minilm" else model
        self.name = PREFIX + model
        self.model = SentenceTransformer(source, device=None if device == "auto" else device)

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def compute(self) -> str:
        return f"{str(self.model.dtype).removeprefix('torch.')} on {self.model.device.type}"

    def embed(
        self,
        texts: Sequence[str],
        *,
        input_type: InputType | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        prompts = self.model.prompts or {}
        kwargs: dict = {"prompt": instruction} if instruction and input_type != "document" else {}
        if not kwargs and input_type in prompts:
            kwargs = {"prompt_name": input_type}
        vectors = self.model.encode(list(texts), normalize_embeddings=True, **kwargs)
        return truncate_dimensions(np.asarray(vectors, dtype=np.float32), dimensions)
