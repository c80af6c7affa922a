"""Few-shot pair classification, the article's recipe.

Embed both sentences, build ``[u, v, |u−v|, u⊙v]`` (the SBERT/InferSent pair features),
fit scikit-learn's ``LogisticRegression`` on n stratified training pairs, repeat over seeds,
report mean ± std accuracy and F1 on the test pairs. The zero-shot baseline classifies by
cosine alone, with the threshold that is most accurate on the training pairs.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from .encoding import DEFAULT_BATCH_SIZE, EmbeddingCache, EncodeStats, encode
from .errors import EvalError, refuse_repeats
from .metrics import best_threshold, classification_scores, row_cosine
from .pairs_data import PairSet
from .protocol import TextEmbedder
from .results import EvalRecord

log = logging.getLogger(__name__)

#: ``None`` stands for "all training pairs"
Shots = Sequence[int | None]
DEFAULT_SHOTS: tuple[int | None, ...] = (50, 100, 500, 1000, None)
DEFAULT_SEEDS = 5
#: enough for lbfgs to converge on ~10k × 4d features; the default 100 often is not
MAX_ITER = 2000


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``[u, v, |u−v|, u⊙v]`` row-wise, shape ``(n, 4d)``."""
    return np.hstack([u, v, np.abs(u - v), u * v])


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` items whose class proportions match ``labels``'; the same
    ``(labels, n, seed)`` always gives the same indices."""
    if n >= len(labels):
        return np.arange(len(labels))
    classes = np.unique(labels)
    if n < len(classes):
        raise EvalError(f"{n} shots cannot cover {len(classes)} classes")
    counts = np.array([np.sum(labels == c) for c in classes])
    if counts.min() >= 2 and len(labels) - n >= len(classes):
        idx, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
        return np.sort(idx)
    # scikit-learn's split refuses a class of one item, or fewer items left out than classes
    # (59 shots of 60 pairs); allot each class its share by largest remainder, at least one each
    share = n * counts / len(labels)
    quota = np.minimum(np.maximum(np.floor(share).astype(int), 1), counts)
    for c in np.argsort(-(share - np.floor(share)), kind="stable"):
        if quota.sum() >= n:
            break
        quota[c] += quota[c] < counts[c]
    while quota.sum() > n:  # (the minimum of one each can overshoot)
        quota[np.argmax(quota)] -= 1
    while quota.sum() < n:  # (a capped class leaves room in another)
        quota[np.argmax(counts - quota)] += 1
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picks))


def shared_pairs(train: PairSet, test: PairSet) -> int:
    """Test pairs that are also training pairs, in either order (a pair's label does not depend on
    it): the same file given as both, or a data set whose splits share pairs."""
    seen = {frozenset(pair) for pair in zip(train.sentence1, train.sentence2, strict=True)}
    return sum(frozenset(pair) in seen for pair in zip(test.sentence1, test.sentence2, strict=True))


def parse_shots(text: str) -> list[int | None]:
    """``"50,100,all"`` → ``[50, 100, None]``. A size written twice is refused; sizes that only
    meet at run time (``5000,all`` on 3,000 training pairs) give one row."""
    parts = [part.strip().lower() for part in text.split(",")]
    shots = [_shot(part) for part in parts]
    refuse_repeats("--shots", parts, key=_shot)
    return shots


def _shot(part: str) -> int | None:
    if part == "all":
        return None
    if part.isdigit() and int(part) > 0:
        return int(part)
    raise EvalError(f"--shots: {part!r} is neither a positive integer nor 'all'")


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    clf = LogisticRegression(max_iter=MAX_ITER)
    with warnings.catch_warnings():
        # a rare non-converged fit is still a valid few-shot result; don't flood the terminal
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    return clf.predict(x_test)


def run_pairs(
    model: TextEmbedder,
    train: PairSet,
    test: PairSet,
    *,
    shots: Shots = DEFAULT_SHOTS,
    seeds: int = DEFAULT_SEEDS,
    instruction: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    cache: EmbeddingCache | None = None,
) -> EvalRecord:
    """One test set's record. ``cache`` (of ``model``) is where a run that trains several test sets
    on the same pairs keeps their vectors between calls; without one, each call embeds its own."""
    start = time.perf_counter()
    y_train = train.binary_labels()
    y_test = test.binary_labels()
    if len(np.unique(y_train)) < 2:
        raise EvalError(f"{train.path}: training pairs need both labels 0 and 1")
    overlap = shared_pairs(train, test)
    if overlap:
        log.warning(
            "%d of the %d test pairs are also training pairs (in either order): the classifier has "
            "seen their answers, so the accuracy overstates what it does on new pairs",
            overlap,
            len(test),
        )
    stats = EncodeStats()
    input_type = "query" if instruction else None
    embed = partial(
        encode,
        model,
        input_type=input_type,
        instruction=instruction,
        batch_size=batch_size,
        stats=stats,
        progress=progress,
        cache=cache if cache is not None else EmbeddingCache(model),
    )
    # the cache keeps the training vectors for the next test set trained on them (one --train for
    # several --data); the test vectors are this set's alone, so they are looked up (a test set that
    # is also the training set) but not kept
    train_vectors = embed(train.sentence1 + train.sentence2, desc=f"pairs {train.name} (training)")
    test_vectors = embed(test.sentence1 + test.sentence2, desc=f"pairs {test.name}", remember=False)
    n_tr, n_te = len(train), len(test)
    u_tr, v_tr = train_vectors[:n_tr], train_vectors[n_tr:]
    u_te, v_te = test_vectors[:n_te], test_vectors[n_te:]
    x_train, x_test = pair_features(u_tr, v_tr), pair_features(u_te, v_te)

    rows: list[dict[str, Any]] = []
    sizes: list[int] = []
    for n in shots:
        size = n_tr if n is None or n >= n_tr else n
        if size in sizes:
            continue  # ("5000,all" on 3,000 pairs: one row of all of them)
        sizes.append(size)
        # the full training set has nothing to sample, and lbfgs is deterministic: one run
        run_seeds = [0] if size == n_tr else list(range(seeds))
        accs: list[float] = []
        f1s: list[float] = []
        for seed in run_seeds:
            idx = stratified_sample(y_train, size, seed)
            scores = classification_scores(y_test, _fit_predict(x_train[idx], y_train[idx], x_test))
            accs.append(scores["accuracy"])
            f1s.append(scores["f1"])
        rows.append(
            {
                "shots": "all" if size == n_tr else n,
                "train_size": size,
                "runs": len(run_seeds),
                "accuracy_mean": float(np.mean(accs)),
                "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                "f1_mean": float(np.mean(f1s)),
                "f1_std": float(np.std(f1s, ddof=1)) if len(f1s) > 1 else 0.0,
                "accuracy_runs": accs,
                "f1_runs": f1s,
            }
        )

    threshold = best_threshold(row_cosine(u_tr, v_tr), y_train)
    zero = classification_scores(y_test, (row_cosine(u_te, v_te) >= threshold).astype(np.int64))
    largest = max(rows, key=lambda r: r["train_size"])
    return EvalRecord(
        task="pairs",
        dataset=test.name,
        data={
            "path": test.path,
            "sha256": test.sha256,
            "pairs": n_te,
            "train_path": train.path,
            "train_sha256": train.sha256,
            "train_pairs": n_tr,
            "test_pairs_in_train": overlap,
        },
        model=model.name,
        dimension=int(train_vectors.shape[1]),
        metrics={
            "accuracy": largest["accuracy_mean"],
            "f1": largest["f1_mean"],
            "zero_shot_accuracy": zero["accuracy"],
            "zero_shot_f1": zero["f1"],
        },
        config={
            "shots": ["all" if n is None else n for n in shots],
            "seeds": seeds,
            "instruction": instruction,
            "classifier": f"LogisticRegression(max_iter={MAX_ITER})",
            "features": "[u, v, |u-v|, u*v]",
            "std": "sample standard deviation (ddof=1) over seeds",
        },
        timing={**stats.as_dict(), "total_s": round(time.perf_counter() - start, 3)},
        details={"shots": rows, "zero_shot": {"threshold": threshold, **zero}},
    )
