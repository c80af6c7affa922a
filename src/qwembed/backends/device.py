"""Device selection and model loading shared by every torch backend."""

from __future__ import annotations

import logging

import torch

#: device types a model can be loaded on
DEVICE_TYPES = ("cpu", "cuda", "mps")

log = logging.getLogger("qwembed.backends")


class DeviceError(ValueError):
    """A device this machine or this torch build cannot run a model on."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU. Any other name is checked
    here, so that ``--device cuda`` on a machine without one fails with a sentence that says so,
    not with torch's assertion halfway through loading the weights."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = f"with CUDA {torch.version.cuda}" if torch.version.cuda else "for the CPU only"
            raise DeviceError(
                f"device {device!r}: no CUDA GPU is usable here (torch {torch.__version__}, built {build})"
            )
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(
                f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r}: Apple's Metal (MPS) is not available here")
    elif resolved.type not in DEVICE_TYPES:
        raise DeviceError(f"device {device!r}: models run on {', '.join(DEVICE_TYPES)}")
    return resolved


def load_transformers_model(
    auto_class, name_or_path: str, *, device: torch.device, dtype: torch.dtype, trust_remote_code: bool
):
    """Tokenizer and model from a folder or hub id: safetensors only, eval mode, on ``device``.

    A checkpoint that lacks weights the model needs is refused (``CheckpointMismatchError``):
    transformers would initialise them at random and say so only in its load report, and the
    model would then serve random scores that change with every start (a Qwen3-Embedding folder
    given as ``--reranker`` has no ``lm_head``). Weights the model does not use are logged."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    model, info = auto_class.from_pretrained(
        name_or_path,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        output_loading_info=True,
    )
    check_loaded_weights(name_or_path, type(model).__name__, info)
    return model.eval().to(device), tokenizer


class CheckpointMismatchError(ValueError):
    """A checkpoint without weights its model needs: they would be random."""


#: what a weight missing from, or left over in, a checkpoint says about it
_LM_HEAD_MISSING = (
    "; a reranker needs a Qwen3-Reranker (causal LM) checkpoint, which has an LM head: is this an "
    "embedding model? Serve embedding models with --model"
)
_LM_HEAD_UNUSED = (
    ": the checkpoint has an LM head, which Qwen3-Embedding checkpoints have not. Is it a "
    "reranker (serve it with --reranker) or a chat model? Its last hidden states are served as "
    "embeddings"
)


def check_loaded_weights(name_or_path: str, model_class: str, info: dict) -> None:
    """Refuse missing weights, log unused ones (``info``: transformers' ``output_loading_info``)."""
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        hint = _LM_HEAD_MISSING if any(key.startswith("lm_head.") for key in missing) else ""
        raise CheckpointMismatchError(
            f"{name_or_path!r} lacks weights that {model_class} needs ({shown}); they would be "
            f"initialised at random{hint}"
        )
    unused = sorted(info.get("unexpected_keys") or ())
    if unused:
        hint = _LM_HEAD_UNUSED if any(key.startswith("lm_head.") for key in unused) else ""
        log.warning(
            "%r: %d weight(s) not used by %s (%s)%s",
            name_or_path,
            len(unused),
            model_class,
            ", ".join(unused[:5]),
            hint,
        )


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
