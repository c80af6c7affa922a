"""Padding-free forward pass for BERT encoders (all-MiniLM, BGE, e5 …, ``model_type: bert``).

A padded batch of short texts of mixed length spends much of its compute on padding: requests of
32 BQ sentences, batched as a server receives them, carry 1.8 padded tokens per real one. Here the
batch is packed (``packing.py``): embeddings, Linear layers, GELU and norms run on the real tokens
only, attention per group of similar-length rows (short ones side by side in tiles); the
intermediate Linear layer and its GELU are one oneDNN call on CPUs (``fused_linear.py``). The
result is the same model function (equal to the padded pass within float rounding, tested).
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from .fused_linear import linear_activation
from .packing import PackedBatch, grouped_attention

_FUSING = threading.Lock()


def supports_packing(model: torch.nn.Module) -> bool:
    """Plain BERT with absolute positions: the architecture this module re-implements."""
    config = getattr(model, "config", None)
    return (
        config is not None
        and config.model_type == "bert"
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and config.hidden_act in _ACTIVATIONS
        and not getattr(config, "is_decoder", False)
    )


#: Hugging Face ``hidden_act`` → ``fused_linear`` activation
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def _fused_qkv(attention: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One ``(3 × hidden, hidden)`` projection for query, key and value: a single matmul is ~3×
    faster than three on a few thousand short-text tokens (AMX, bf16). The three Linear layers'
    weights are re-pointed at slices of the fused tensor, so it costs no memory, and the check
    below notices when something (a dtype cast, a device move) replaced them since."""
    projections = (attention.query, attention.key, attention.value)
    fused = getattr(attention, "_qwembed_fused_qkv", None)
    if fused is not None and _still_fused(projections, fused[0]):
        return fused
    with _FUSING, torch.no_grad():  # two streams may reach a layer's first call together
        fused = getattr(attention, "_qwembed_fused_qkv", None)
        if fused is not None and _still_fused(projections, fused[0]):
            return fused
        weight = projections[0].weight
        fused_weight = torch.cat([p.weight for p in projections])
        has_bias = all(p.bias is not None for p in projections)
        fused_bias = torch.cat([p.bias for p in projections]) if has_bias else None
        rows = weight.shape[0]
        for i, p in enumerate(projections):
            p.weight = torch.nn.Parameter(fused_weight[i * rows : (i + 1) * rows], requires_grad=False)
            if fused_bias is not None:
                p.bias = torch.nn.Parameter(fused_bias[i * rows : (i + 1) * rows], requires_grad=False)
        attention._qwembed_fused_qkv = (fused_weight, fused_bias)
        return attention._qwembed_fused_qkv


def _still_fused(projections: tuple[torch.nn.Module, ...], fused: torch.Tensor) -> bool:
    """Each projection's weight is still its slice of ``fused`` (nothing cast or moved it since)."""
    rows = projections[0].weight.shape[0]
    return all(
        p.weight.data_ptr() == fused[i * rows].data_ptr() and p.weight.dtype == fused.dtype
        for i, p in enumerate(projections)
    )


def packed_bert_forward(bert: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Last hidden states of ``bert``'s packed tokens, ``(tokens, hidden)``; ``batch.pad`` gives the
    padded view."""
    config = bert.config
    activation = _ACTIVATIONS[config.hidden_act]
    emb = bert.embeddings
    packed = batch.to(emb.word_embeddings.weight.device)
    hidden = (
        emb.word_embeddings(packed.ids)
        + emb.position_embeddings(packed.positions)
        + emb.token_type_embeddings.weight[0]  # single-segment inputs
    )
    hidden = emb.LayerNorm(hidden)
    heads = config.num_attention_heads
    for layer in bert.encoder.layer:
        qkv = F.linear(hidden, *_fused_qkv(layer.attention.self)).view(len(hidden), 3 * heads, -1)
        context = grouped_attention(packed, qkv, heads, heads, causal=False)
        output = layer.attention.output
        hidden = output.LayerNorm(output.dense(context) + hidden)
        intermediate = linear_activation(hidden, layer.intermediate.dense, activation)
        hidden = layer.output.LayerNorm(layer.output.dense(intermediate) + hidden)
    return hidden
