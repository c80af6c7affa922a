"""Model families behind one small interface: :class:`Encoder` (embeddings) and :class:`Reranker`.

Names are imported lazily, as in ``qwembed.engine``: naming a model (``BUNDLED``,
``check_model_name``) needs no torch, so ``qwembed --help``, the knowledge base's listings and
the hashing baseline start without it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS = {
    "BUNDLED": ".registry",
    "DeviceError": ".device",
    "Encoder": ".base",
    "InputTooLongError": ".base",
    "InputType": ".base",
    "InvalidTokenIdsError": ".base",
    "LoadOptions": ".registry",
    "ModelCard": ".base",
    "ModelNotFoundError": ".registry",
    "PairTooLongError": ".base",
    "PromptTooLongError": ".base",
    "Reranker": ".base",
    "TokenIds": ".base",
    "check_model_name": ".registry",
    "load_encoder": ".registry",
    "load_reranker": ".registry",
    "resolve_device": ".device",
}

__all__ = [
    "BUNDLED",
    "DeviceError",
    "Encoder",
    "InputTooLongError",
    "InputType",
    "InvalidTokenIdsError",
    "LoadOptions",
    "ModelCard",
    "ModelNotFoundError",
    "PairTooLongError",
    "PromptTooLongError",
    "Reranker",
    "TokenIds",
    "check_model_name",
    "load_encoder",
    "load_reranker",
    "resolve_device",
]

if TYPE_CHECKING:
    from .base import (
        Encoder,
        InputTooLongError,
        InputType,
        InvalidTokenIdsError,
        ModelCard,
        PairTooLongError,
        PromptTooLongError,
        Reranker,
        TokenIds,
    )
    from .device import DeviceError, resolve_device
    from .registry import (
        BUNDLED,
        LoadOptions,
        ModelNotFoundError,
        check_model_name,
        load_encoder,
        load_reranker,
    )


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qwembed.backends' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
