"""Tokenisation, token-budget batching, the worker loop and post-processing.

Names are imported lazily, so that light users (the HTTP client in ``engine.remote``) do not pay
for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS = {
    "BatchWorker": ".worker",
    "Embedder": ".embedder",
    "InvalidDimensionsError": ".postprocess",
    "OverloadedError": ".worker",
    "WorkerStoppedError": ".worker",
    "truncate_dimensions": ".postprocess",
}

__all__ = [
    "BatchWorker",
    "Embedder",
    "InvalidDimensionsError",
    "OverloadedError",
    "WorkerStoppedError",
    "truncate_dimensions",
]

if TYPE_CHECKING:
    from .embedder import Embedder
    from .postprocess import InvalidDimensionsError, truncate_dimensions
    from .worker import BatchWorker, OverloadedError, WorkerStoppedError


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qwembed.engine' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
