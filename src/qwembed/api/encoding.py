"""Response bodies built without per-float Python work: orjson serialises numpy arrays directly,
and base64 is taken from the float32 bytes."""

from __future__ import annotations

import base64

import numpy as np
import orjson


def embeddings_body(vectors: np.ndarray, model: str, prompt_tokens: int, encoding_format: str) -> bytes:
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        items = [base64.b64encode(row.tobytes()).decode("ascii") for row in vectors]
    else:
        items = list(vectors)
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": item} for i, item in enumerate(items)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def vectors_body(vectors: np.ndarray) -> bytes:
    """The vectors as a bare JSON array of arrays of floats (TEI's /embed answer)."""
    return orjson.dumps(np.ascontiguousarray(vectors, dtype="<f4"), option=orjson.OPT_SERIALIZE_NUMPY)
