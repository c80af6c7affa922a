"""Model families behind one small interface: :class:`Encoder` (embeddings) and :class:`Reranker`."""

from .base import (
    Encoder,
    InputTooLongError,
    InputType,
    InvalidTokenIdsError,
    ModelCard,
    PromptTooLongError,
    Reranker,
    TokenIds,
)
from .device import DeviceError, resolve_device
from .registry import BUNDLED, LoadOptions, ModelNotFoundError, check_model_name, load_encoder, load_reranker

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
    "PromptTooLongError",
    "Reranker",
    "TokenIds",
    "check_model_name",
    "load_encoder",
    "load_reranker",
    "resolve_device",
]
