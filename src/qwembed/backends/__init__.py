"""Model families behind one small interface: :class:`Encoder` (embeddings) and :class:`Reranker`."""

from .base import Encoder, InputTooLongError, InputType, InvalidTokenIdsError, ModelCard, Reranker, TokenIds
from .registry import BUNDLED, LoadOptions, ModelNotFoundError, check_model_name, load_encoder, load_reranker

__all__ = [
    "BUNDLED",
    "Encoder",
    "InputTooLongError",
    "InputType",
    "InvalidTokenIdsError",
    "LoadOptions",
    "ModelCard",
    "ModelNotFoundError",
    "Reranker",
    "TokenIds",
    "check_model_name",
    "load_encoder",
    "load_reranker",
]
