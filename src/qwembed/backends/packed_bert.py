"""Padding-free forward pass for BERT encoders: BERT itself (all-MiniLM, BGE, e5 …) and the RoBERTa
family that shares its layers (XLM-R: BGE-M3, multilingual-e5, the BGE rerankers).

A padded batch of short texts of mixed length spends much of its compute on padding: requests of
32 BQ sentences, batched as a server receives them, carry 1.8 padded tokens per real one. Here the
batch is packed (``packing.py``): embeddings, Linear layers, GELU and norms run on the real tokens
only, attention per group of similar-length rows (short ones side by side in tiles). Query, key
and value are one projection (``fused_projections.py``); on CPUs the Linear layers run through
oneDNN, the intermediate one with its GELU in the same call (``fused_linear.py``); in mixed bf16
each residual add and LayerNorm is one pass that also rounds for the next layer
(``residual_norm.py``). The result is the same model function (equal to the padded pass within
float rounding, tested).
"""

from __future__ import annotations

import torch

from .fused_linear import linear, linear_activation
from .fused_projections import fused_projection
from .packing import PackedBatch, grouped_attention
from .residual_norm import add_and_norm

#: the Hugging Face model types with BERT's layers, and absolute positions numbered from 0 (BERT)
#: or from ``pad_token_id + 1`` (RoBERTa and XLM-R, which keep the rows below for padding)
_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")


def supports_packing(model: torch.nn.Module) -> bool:
    """BERT or RoBERTa with absolute positions: the architecture this module re-implements."""
    config = getattr(model, "config", None)
    return (
        config is not None
        and config.model_type in _MODEL_TYPES
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and config.hidden_act in _ACTIVATIONS
        and not getattr(config, "is_decoder", False)
    )


#: Hugging Face ``hidden_act`` → ``fused_linear`` activation
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def packed_bert_forward(
    bert: torch.nn.Module,
    batch: PackedBatch,
    token_types: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Last hidden states of ``bert``'s packed tokens, ``(tokens, hidden)``; ``batch.pad`` gives the
    padded view. ``token_types``: each packed token's segment (a cross-encoder's query 0, document
    1); None: one segment.

    ``rows``: only these packed tokens' states, in this order — e.g. each sequence's first token,
    where a CLS head or CLS pooling reads. The final layer then runs past its attention on those
    tokens alone: its attention reads every token's keys and values, but nothing reads the other
    tokens' outputs, and their output projection, norms and feed-forward are most of a layer's
    FLOPs (an eighth of a 6-layer model's), for the same values at the rows kept."""
    config = bert.config
    activation = _ACTIVATIONS[config.hidden_act]
    emb = bert.embeddings
    packed = batch.to(emb.word_embeddings.weight.device)
    segments = (
        emb.token_type_embeddings.weight[0]
        if token_types is None
        else emb.token_type_embeddings(token_types.to(packed.ids.device))
    )
    positions = packed.positions
    if config.model_type != "bert":  # RoBERTa's first real position is pad_token_id + 1
        positions = positions + config.pad_token_id + 1
    hidden = emb.word_embeddings(packed.ids) + emb.position_embeddings(positions) + segments
    hidden = emb.LayerNorm(hidden)
    rounded = None  # ``hidden`` in bf16, where the fused add & norm made it: the next Linear layer's input
    heads = config.num_attention_heads
    final = bert.encoder.layer[-1]
    for layer in bert.encoder.layer:
        attention = layer.attention.self
        qkv_weights = fused_projection(attention, (attention.query, attention.key, attention.value))
        qkv = linear(hidden if rounded is None else rounded, *qkv_weights).view(len(hidden), 3 * heads, -1)
        context = grouped_attention(packed, qkv, heads, heads, causal=False)
        if layer is final and rows is not None:  # from here on, only the rows asked for
            kept = rows.to(hidden.device)
            context, hidden = context[kept], hidden[kept]
        output = layer.attention.output
        # residual adds in place: ``hidden`` is this function's own (each LayerNorm's fresh output)
        delta = linear(context, output.dense.weight, output.dense.bias)
        hidden, rounded = add_and_norm(hidden, delta, output.LayerNorm)
        intermediate = linear_activation(
            hidden if rounded is None else rounded, layer.intermediate.dense, activation
        )
        delta = linear(intermediate, layer.output.dense.weight, layer.output.dense.bias)
        hidden, rounded = add_and_norm(hidden, delta, layer.output.LayerNorm)
    return hidden
