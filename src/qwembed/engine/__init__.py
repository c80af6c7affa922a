"""Tokenisation, token-budget batching, the worker loop and post-processing."""

from .embedder import Embedder
from .postprocess import InvalidDimensionsError, truncate_dimensions
from .worker import BatchWorker, OverloadedError, WorkerStoppedError

__all__ = [
    "BatchWorker",
    "Embedder",
    "InvalidDimensionsError",
    "OverloadedError",
    "WorkerStoppedError",
    "truncate_dimensions",
]
