"""Reproducible evaluations of embedding models: STS, few-shot pair classification,
retrieval, parameter sweeps; local models and OpenAI-compatible endpoints alike."""

from .errors import DataError, EvalError
from .protocol import InputType, TextEmbedder

__all__ = ["DataError", "EvalError", "InputType", "TextEmbedder"]
