"""Device selection and model loading shared by every torch backend."""

from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_transformers_model(
    auto_class, name_or_path: str, *, device: torch.device, dtype: torch.dtype, trust_remote_code: bool
):
    """Tokenizer and model from a folder or hub id: safetensors only, eval mode, on ``device``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    model = auto_class.from_pretrained(
        name_or_path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model.eval().to(device), tokenizer


def transformers_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a SentenceTransformer's or CrossEncoder's first module
    (``model`` in sentence-transformers 6, ``auto_model`` before)."""
    first = model[0]
    return getattr(first, "model", None) or first.auto_model


def sentence_transformers_options(
    *, device: torch.device, dtype: torch.dtype, trust_remote_code: bool
) -> dict:
    """Constructor arguments for SentenceTransformer / CrossEncoder with the same loading rules."""
    return {
        "device": str(device),
        "trust_remote_code": trust_remote_code,
        "model_kwargs": {"dtype": dtype, "use_safetensors": True},
    }
