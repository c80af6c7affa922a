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
    # the library's errors, all ValueError subclasses, importable from here
    "EmptyInstructionError": ".instructions",
    "InputTooLongError": "..backends.base",
    "InvalidDimensionsError": ".postprocess",
    "InvalidTextError": ".inputs",
    "InvalidTokenIdsError": "..backends.base",
    "NormalizeUnsupportedError": ".postprocess",
    "PairTooLongError": "..backends.base",
    "PromptTooLongError": "..backends.base",
    "OverloadedError": ".worker",
    "WorkerStoppedError": ".worker",
    "truncate_dimensions": ".postprocess",
}

__all__ = [
    "BatchWorker",
    "Embedder",
    "EmptyInstructionError",
    "InputTooLongError",
    "InvalidDimensionsError",
    "InvalidTextError",
    "InvalidTokenIdsError",
    "NormalizeUnsupportedError",
    "OverloadedError",
    "PairTooLongError",
    "PromptTooLongError",
    "WorkerStoppedError",
    "truncate_dimensions",
]

if TYPE_CHECKING:
    from ..backends.base import InputTooLongError, InvalidTokenIdsError, PairTooLongError, PromptTooLongError
    from .embedder import Embedder
    from .inputs import InvalidTextError
    from .instructions import EmptyInstructionError
    from .postprocess import InvalidDimensionsError, NormalizeUnsupportedError, truncate_dimensions
    from .worker import BatchWorker, OverloadedError, WorkerStoppedError


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qwembed.engine' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
