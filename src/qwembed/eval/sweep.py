"""Sweep: dimensions × query instruction on/off × post-processing on one data set.

Each text is embedded once per instruction setting at full size; smaller sizes are the
first ``d`` components re-normalised, which is exactly what the engine's ``dimensions=``
(Matryoshka truncation) does, so the grid costs two embedding passes instead of dozens.

Post-processing (PCA, whitening) is fitted without labels on the documents of a retrieval
set, or on all sentences of an STS set (each instruction setting separately), and applied to
queries and documents alike. Fitted transforms can be saved for the server to reuse.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .encoding import DEFAULT_BATCH_SIZE, EncodeStats, encode, normalize_rows
from .errors import EvalError, refuse_repeats
from .metrics import row_cosine, sts_scores
from .pairs_data import PairSet
from .protocol import TextEmbedder
from .results import EvalRecord
from .retrieval import embed_retrieval_set, score_rankings
from .retrieval_data import RetrievalSet
from .transforms import LinearTransform, parse_post

log = logging.getLogger(__name__)

DEFAULT_DIMS: tuple[int | None, ...] = (32, 64, 128, 256, 512, 1024, None)
DEFAULT_POSTS = ("none", "pca:128", "whiten")
RETRIEVAL_METRICS = ["ndcg_at_10", "mrr_at_10", "top1_accuracy", "recall_at_10"]
STS_METRICS = ["cosine_spearman", "cosine_pearson"]


def parse_dims(text: str) -> list[int | None]:
    """``"32,64,full"`` → ``[32, 64, None]`` (None = the model's full dimension)."""
    parts = [part.strip().lower() for part in text.split(",")]
    dims = [_dim(part) for part in parts]
    refuse_repeats("--dims", parts, key=_dim)
    return dims


def _dim(part: str) -> int | None:
    if part in ("full", "all"):
        return None
    if part.isdigit() and int(part) > 0:
        return int(part)
    raise EvalError(f"--dims: {part!r} is neither a positive integer nor 'full'")


def parse_posts(text: str) -> list[str]:
    """``"none, PCA:64,whitening"`` → ``["none", "pca:64", "whiten"]``: each setting under one
    spelling, so that its rows, plots and saved files are named alike however it was written."""
    parts = [p.strip().lower() for p in text.split(",") if p.strip()]
    posts = [_canonical_post(p) for p in parts]
    refuse_repeats("--post", parts, key=_canonical_post)
    return posts


def _canonical_post(spec: str) -> str:
    try:
        transform = parse_post(spec)
    except ValueError as exc:
        raise EvalError(f"--post: {exc}") from None
    if transform is None:
        return "none"
    return transform.kind + (f":{transform.n_components}" if transform.n_components else "")


def truncate(x: np.ndarray, d: int) -> np.ndarray:
    return x if d >= x.shape[1] else normalize_rows(x[:, :d])


def run_sweep(
    model: TextEmbedder,
    data: RetrievalSet | PairSet,
    *,
    dims: Sequence[int | None] = DEFAULT_DIMS,
    posts: Sequence[str] = DEFAULT_POSTS,
    instruction: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    save_dir: Path | None = None,
) -> EvalRecord:
    start = time.perf_counter()
    stats = EncodeStats()
    retrieval = isinstance(data, RetrievalSet)
    # instruction "on": queries as input_type="query" with the instruction (or the model's
    # default one); "off": queries as plain text, the way a document without a type is.
    if retrieval:
        q_on, docs = embed_retrieval_set(
            model, data, instruction=instruction, batch_size=batch_size, stats=stats, progress=progress
        )
        q_off = encode(
            model,
            list(data.queries.values()),
            input_type=None,
            batch_size=batch_size,
            stats=stats,
            progress=progress,
            desc=f"{data.name} queries, no instruction",
        )
        variants = {True: (q_on, docs), False: (q_off, docs)}
    else:
        texts = data.sentence1 + data.sentence2
        on = encode(
            model,
            texts,
            input_type="query",
            instruction=instruction,
            batch_size=batch_size,
            stats=stats,
            progress=progress,
            desc=f"{data.name}, instruction",
        )
        off = encode(
            model,
            texts,
            input_type=None,
            batch_size=batch_size,
            stats=stats,
            progress=progress,
            desc=f"{data.name}, no instruction",
        )
        n = len(data)
        variants = {True: (on[:n], on[n:]), False: (off[:n], off[n:])}
    full = int(variants[True][0].shape[1])
    metric_names = RETRIEVAL_METRICS if retrieval else STS_METRICS

    rows: list[dict[str, Any]] = []
    fitted: dict[tuple[int, str], LinearTransform | None] = {}
    fitted_on: dict[tuple[int, str], int] = {}  # vectors each transform was fitted on
    for use_instruction in (True, False):
        left_full, right_full = variants[use_instruction]
        for d in _distinct_sizes(dims, full):
            for post in posts:
                row: dict[str, Any] = {"dims": d, "instruction": use_instruction, "post": post}
                rows.append(row)
                if d > full:
                    row["skipped"] = f"model has {full} dimensions"
                    continue
                transform = parse_post(post)
                if (
                    transform is not None
                    and transform.n_components is not None
                    and transform.n_components > d
                ):
                    row["skipped"] = f"{post} needs more than {d} dimensions"
                    continue
                left, right = truncate(left_full, d), truncate(right_full, d)
                if transform is not None:
                    # retrieval fits on the documents, shared by both query variants; STS on
                    # the variant's own sentences
                    key = (d, post) if retrieval else (d, f"{post}|{use_instruction}")
                    new_fit = key not in fitted
                    if new_fit:
                        fitting = right if retrieval else np.vstack([left, right])
                        fitted[key] = transform.fit(fitting)
                        fitted_on[key] = len(fitting)
                        if save_dir is not None:
                            tag = "" if retrieval else ("-instr" if use_instruction else "-noinstr")
                            fitted[key].save(save_dir / f"{slug(model.name)}-{d}-{slug(post)}{tag}.npz")
                    transform = fitted[key]
                    assert transform is not None
                    left, right = transform.transform(left), transform.transform(right)
                    row["output_dims"] = transform.output_dimension
                    warning = few_vectors_warning(transform, fitted_on[key])
                    if warning:
                        row["warning"] = warning
                        if new_fit:  # once per fit: a retrieval fit serves both instruction settings
                            fit = "" if retrieval else f", instruction {'on' if use_instruction else 'off'}"
                            log.warning(
                                "%s on %s, %s, dims %d%s: %s", model.name, data.name, post, d, fit, warning
                            )
                if retrieval:
                    metrics, _ = score_rankings(data, left, right)  # type: ignore[arg-type]
                else:
                    metrics = sts_scores(row_cosine(left, right), data.labels)  # type: ignore[union-attr]
                row["metrics"] = {m: metrics[m] for m in metric_names}

    done = [r for r in rows if "metrics" in r]
    if not done:
        raise EvalError(
            "every sweep setting was skipped; check --dims and --post against the model's dimension"
        )
    best = max(done, key=lambda r: r["metrics"][metric_names[0]])
    reference = next(
        (r for r in done if r["dims"] == full and r["instruction"] and r["post"] == "none"), best
    )
    data_meta: dict[str, Any] = {"path": data.path, "sha256": data.sha256}
    if retrieval:
        data_meta.update(queries=len(data.queries), documents=len(data.corpus))  # type: ignore[union-attr]
    else:
        data_meta.update(pairs=len(data))
    return EvalRecord(
        task="sweep",
        dataset=data.name,
        data=data_meta,
        model=model.name,
        dimension=full,
        metrics=dict(reference["metrics"]),
        config={
            "kind": "retrieval" if retrieval else "sts",
            "dims": [d if d is not None else "full" for d in dims],
            "posts": list(posts),
            "instruction": instruction,
            "metrics": metric_names,
            "fit_on": "the corpus documents"
            if retrieval
            else "all sentences of the set (per instruction setting)",
            "reference": "dims=full, instruction on, post none",
        },
        timing={**stats.as_dict(), "total_s": round(time.perf_counter() - start, 3)},
        details={"rows": rows, "best": best},
    )


def _distinct_sizes(dims: Sequence[int | None], full: int) -> list[int]:
    """The sizes ``dims`` asks for, ``full`` for None, each once: ``64,full`` on a 64-dimensional
    model is one size, and would otherwise give the same rows twice."""
    return list(dict.fromkeys(full if d is None else d for d in dims))


#: vectors per direction below which a whitening's smallest variances are mostly noise (a common
#: rule of thumb for estimating a covariance); whitening divides by them, magnifying that noise
MIN_VECTORS_PER_DIRECTION = 10


def few_vectors_warning(transform: LinearTransform, n_vectors: int) -> str | None:
    """Why a whitening's numbers should not be trusted, when it was fitted on too few vectors (an
    STS set's 400 sentences for 340 directions scored a Spearman of 0.47 that another whitening
    of the same vectors put at 0.17: both noise). PCA only rotates and drops, so it is exempt."""
    if transform.kind != "whiten" or n_vectors >= MIN_VECTORS_PER_DIRECTION * transform.output_dimension:
        return None
    return (
        f"whitened {transform.output_dimension} directions fitted on {n_vectors} vectors (fewer than "
        f"{MIN_VECTORS_PER_DIRECTION} per direction): its smallest variances are mostly noise, which "
        "whitening magnifies; fit on more vectors or keep fewer directions (whiten:K)"
    )


def slug(text: str) -> str:
    """``text`` as a file name: anything but letters, digits and ``._-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
