"""Post-processing of embeddings: PCA and whitening, fitted once and saved to a file.

Both are one affine map ``y = (x − mean) @ W`` followed by re-normalisation, so one class
applies either and one ``.npz`` format stores either; the server can load a file with
:func:`load_transform` and apply it with numpy alone (no scikit-learn at serving time).

* PCA:k keeps the top-k principal directions (rotation + projection, no rescaling).
* Whitening (Su et al. 2021, "Whitening sentence representations"): rotate to the principal
  directions and divide each by its standard deviation, so the output has identity
  covariance; optionally keep only the top-k (``whiten:k``). It removes the dominant shared
  directions that make all cosines of an anisotropic model look alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

FORMAT_VERSION = 1
#: keeps 1/sqrt(eigenvalue) finite for directions with (numerically) no variance
_EPS = 1e-8
#: whitening drops directions whose variance is below this fraction of the largest: with
#: fewer fitting vectors than dimensions they are the null space, and dividing by their
#: ~0 standard deviation would blow up noise
_WHITEN_REL_TOL = 1e-9


class NotFittedError(RuntimeError):
    pass


class LinearTransform:
    """Base for fitted ``(x − mean) @ W`` maps; subclasses only decide how ``W`` is fitted."""

    kind: ClassVar[str] = "linear"

    def __init__(self, n_components: int | None = None, *, normalize: bool = True):
        self.n_components = n_components
        self.normalize = normalize
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None  # (d_in, d_out)

    # ---- scikit-learn style ----------------------------------------------------------------
    def fit(self, x: np.ndarray) -> LinearTransform:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError("fit needs a 2-D array of at least two vectors")
        k = self.n_components or x.shape[1]
        if not 1 <= k <= x.shape[1]:
            raise ValueError(f"n_components={k} is not between 1 and the input dimension {x.shape[1]}")
        self.mean_ = x.mean(axis=0)
        # eigen-decomposition of the covariance, strongest direction first; deterministic
        # signs (largest |entry| positive) so refits on the same data give the same file
        cov = np.cov(x - self.mean_, rowvar=False, bias=True)
        eigvals, eigvecs = np.linalg.eigh(cov)
        order = np.argsort(eigvals)[::-1][:k]
        eigvals, eigvecs = np.clip(eigvals[order], 0.0, None), eigvecs[:, order]
        keep = self._keep(eigvals)
        eigvals, eigvecs, k = eigvals[:keep], eigvecs[:, :keep], keep
        signs = np.sign(eigvecs[np.argmax(np.abs(eigvecs), axis=0), np.arange(k)])
        eigvecs = eigvecs * np.where(signs == 0, 1.0, signs)
        self.components_ = self._weights(eigvecs, eigvals)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.mean_ is None or self.components_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"expected vectors of dimension {self.mean_.shape[0]}, got shape {x.shape}")
        y = (x - self.mean_) @ self.components_
        if self.normalize:
            y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return y.astype(np.float32)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)

    @property
    def input_dimension(self) -> int:
        if self.mean_ is None:
            raise NotFittedError(type(self).__name__ + " is not fitted")
        return int(self.mean_.shape[0])

    @property
    def output_dimension(self) -> int:
        if self.components_ is None:
            raise NotFittedError(type(self).__name__ + " is not fitted")
        return int(self.components_.shape[1])

    # ---- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` (numpy adds the suffix when missing); returns the real path."""
        if self.mean_ is None or self.components_ is None:
            raise NotFittedError(f"cannot save an unfitted {type(self).__name__}")
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            format_version=np.int64(FORMAT_VERSION),
            kind=np.str_(self.kind),
            normalize=np.bool_(self.normalize),
            mean=self.mean_,
            components=self.components_,
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> LinearTransform:
        """Load a file written by any transform's ``save``; returns the class that wrote it."""
        return load_transform(path)

    def _weights(self, eigvecs: np.ndarray, eigvals: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _keep(self, eigvals: np.ndarray) -> int:
        """How many of the (sorted, strongest first) directions to keep."""
        return len(eigvals)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_components={self.n_components}, normalize={self.normalize})"


class PCA(LinearTransform):
    kind = "pca"

    def _weights(self, eigvecs: np.ndarray, eigvals: np.ndarray) -> np.ndarray:
        return eigvecs


class Whitening(LinearTransform):
    kind = "whiten"

    def _weights(self, eigvecs: np.ndarray, eigvals: np.ndarray) -> np.ndarray:
        return eigvecs / np.sqrt(eigvals + _EPS)

    def _keep(self, eigvals: np.ndarray) -> int:
        return max(1, int(np.sum(eigvals > _WHITEN_REL_TOL * eigvals[0])))


_KINDS: dict[str, type[LinearTransform]] = {PCA.kind: PCA, Whitening.kind: Whitening}


def load_transform(path: str | Path) -> LinearTransform:
    with np.load(Path(path), allow_pickle=False) as f:
        version = int(f["format_version"])
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path}: transform format {version} is not supported (expected {FORMAT_VERSION})"
            )
        kind = str(f["kind"])
        if kind not in _KINDS:
            raise ValueError(f"{path}: unknown transform kind {kind!r}")
        transform = _KINDS[kind](normalize=bool(f["normalize"]))
        transform.mean_ = np.asarray(f["mean"], dtype=np.float64)
        transform.components_ = np.asarray(f["components"], dtype=np.float64)
    transform.n_components = transform.components_.shape[1]
    return transform


def parse_post(spec: str) -> LinearTransform | None:
    """``none`` → None; ``pca:K`` → PCA(K); ``whiten`` / ``whiten:K`` → Whitening."""
    name, _, arg = spec.strip().lower().partition(":")
    if name == "none" and not arg:
        return None
    if arg and not (arg.isdigit() and int(arg) > 0):
        raise ValueError(f"post-processing {spec!r}: {arg!r} is not a positive integer")
    k = int(arg) if arg else None
    if name == "pca":
        if k is None:
            raise ValueError("pca needs a size, e.g. pca:128")
        return PCA(k)
    if name in ("whiten", "whitening"):
        return Whitening(k)
    raise ValueError(f"unknown post-processing {spec!r}: use none, pca:K, whiten or whiten:K")
