"""STS: Spearman/Pearson correlation between pair cosines and gold labels (as MTEB)."""

from __future__ import annotations

import time

from .encoding import DEFAULT_BATCH_SIZE, EncodeStats, encode
from .errors import DataError
from .metrics import row_cosine, sts_scores
from .pairs_data import PairSet
from .protocol import TextEmbedder
from .results import EvalRecord


def run_sts(
    model: TextEmbedder,
    data: PairSet,
    *,
    instruction: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> EvalRecord:
    """Both sentences are embedded alike (a symmetric task): as queries carrying
    ``instruction`` when one is given, else as plain text."""
    start = time.perf_counter()
    stats = EncodeStats()
    input_type = "query" if instruction else None
    vectors = encode(
        model,
        data.sentence1 + data.sentence2,
        input_type=input_type,
        instruction=instruction,
        batch_size=batch_size,
        stats=stats,
        progress=progress,
        desc=f"STS {data.name}",
    )
    n = len(data)
    cosines = row_cosine(vectors[:n], vectors[n:])
    try:
        metrics = sts_scores(cosines, data.labels)
    except ValueError as exc:
        raise DataError(data.path, str(exc)) from None
    return EvalRecord(
        task="sts",
        dataset=data.name,
        data={"path": data.path, "sha256": data.sha256, "pairs": n},
        model=model.name,
        dimension=int(vectors.shape[1]),
        metrics=metrics,
        config={"instruction": instruction},
        timing={**stats.as_dict(), "total_s": round(time.perf_counter() - start, 3)},
    )
