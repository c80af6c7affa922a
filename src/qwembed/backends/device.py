"""Device and dtype selection shared by every torch backend."""

from __future__ import annotations

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA (what the Qwen3 checkpoints are stored in), float32 on CPU,
    where exact results matter more than the speed bf16 gives only on recent CPUs."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(_DTYPES)}") from None


def load_transformers_model(auto_class, name_or_path: str, *, device: str, dtype, trust_remote_code: bool):
    """Tokenizer and model from a folder or hub id: safetensors only, eval mode, on the chosen device."""
    from transformers import AutoTokenizer

    dev = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    model = auto_class.from_pretrained(
        name_or_path,
        dtype=resolve_dtype(dtype, dev),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    return model.eval().to(dev), tokenizer


def sentence_transformers_options(*, device: str, dtype, trust_remote_code: bool) -> dict:
    """Constructor arguments for SentenceTransformer / CrossEncoder with the same loading rules."""
    dev = resolve_device(device)
    return {
        "device": str(dev),
        "trust_remote_code": trust_remote_code,
        "model_kwargs": {"dtype": resolve_dtype(dtype, dev), "use_safetensors": True},
    }
