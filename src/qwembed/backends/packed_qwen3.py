"""Padding-free forward pass for Qwen3 embedding models (``model_type: qwen3``).

The same idea as ``packed_bert.py`` for the decoder Qwen3-Embedding is built on: norms, the
Linear projections (query, key and value as one, ``fused_projections.py``), RoPE and the MLP
(activation and gating fused into its projections on CPUs, ``fused_linear.py``) run on the
batch's real tokens only (``packing.py``). The norms and RoPE take few passes over memory and
write where the next step reads (``qwen3_pointwise.py``). Causal attention runs per group of
similar-length rows, padded on the right — so, being causal, it needs no padding mask at all.
Each sequence is pooled at its own last token, the ``<|endoftext|>`` the encoder appends, exactly
where the padded forward's left padding puts it. Equal to that forward within float rounding
(tested on tiny random Qwen3 models).

Leading tokens that sequences of the batch have in common (a request's instruction, the
reranker's prompt and query) run through everything but attention once (``shared_prefixes.py``),
and prefixes an earlier batch computed for a ``PrefixCache`` not at all (``prefix_cache.py``).

The final layer runs past its attention on the pooled tokens only. Attention is causal, so a
token's output depends on earlier tokens alone, and after the final layer nothing reads the other
tokens: their output projection and MLP — most of a layer's FLOPs — would be computed for nobody.
The keys and values still come from every token. That skips most of one layer in 28 (the 0.6B
shape) or 36 (4B) at no cost in exactness.
"""

from __future__ import annotations

import torch

from .fused_linear import linear
from .fused_projections import fused_projection
from .packing import PackedBatch, grouped_attention
from .prefix_cache import PrefixCache
from .qwen3_pointwise import EAGER, Pointwise
from .shared_prefixes import SharedPrefixes

#: tokens per MLP pass. Its gate and up projections are the forward's largest buffers: at a GPU
#: batch of 16k tokens of the 4B shape, 2 × 319 MB, which set the peak (bench/activation_memory.py).
#: In passes of 4,096 tokens they shrink to a quarter and the attention block sets the peak
#: instead. Every MLP operation is per token, so the passes compute the same values (up to the
#: matmul library picking another kernel for fewer rows). CPU batches (2,048 tokens) take one pass.
MLP_CHUNK_TOKENS = 4096


def supports_packing(model: torch.nn.Module) -> bool:
    """A Qwen3 model with full (not sliding-window) attention in every layer."""
    config = getattr(model, "config", None)
    return (
        config is not None
        and config.model_type == "qwen3"
        and all(
            kind == "full_attention" for kind in getattr(config, "layer_types", None) or ["full_attention"]
        )
        and hasattr(model, "layers")
        and hasattr(model, "rotary_emb")
    )


def _attention(
    attention: torch.nn.Module,
    x: torch.Tensor,
    packed: PackedBatch,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: tuple[int, int],
    pointwise: Pointwise,
    shared: SharedPrefixes | None,
    layer: int,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention block's output projection for normed input ``x`` (one row per node where
    prefixes are ``shared``, else per packed token), at the packed tokens ``rows`` (None: every
    node or token, as ``x``); ``layer`` numbers the layer, for the cached prefixes' rows. Its own
    function so that the QKV projection and the attention output (at 16k tokens of the 4B shape,
    201 and 134 MB) are freed on return, before the MLP allocates its two large buffers."""
    q_heads, kv_heads = heads
    qkv_weights = fused_projection(attention, (attention.q_proj, attention.k_proj, attention.v_proj))
    # (tokens, query heads, then key heads, then value heads, width): the attention input once
    # the query and key heads are normalised and rotated in place
    qkv = linear(x, *qkv_weights).view(len(x), q_heads + 2 * kv_heads, -1)
    pointwise.rotate_normed_(qkv[:, :q_heads], attention.q_norm, cos, sin)
    pointwise.rotate_normed_(qkv[:, q_heads : q_heads + kv_heads], attention.k_norm, cos, sin)
    if shared is not None:  # each sequence whole, for attention
        qkv = shared.attention_input(qkv, layer)
    context = grouped_attention(packed, qkv, q_heads, kv_heads, causal=True, scale=attention.scaling)
    del qkv  # freed before the output projection allocates its own output
    if rows is not None:
        context = context[rows]
    elif shared is not None:
        context = context[shared.collapse]
    return linear(context, attention.o_proj.weight, attention.o_proj.bias)


def _mlp(mlp: torch.nn.Module, x: torch.Tensor, activation: str, pointwise: Pointwise) -> torch.Tensor:
    """``down(silu(gate(x)) * up(x))``, the product from ``pointwise`` (fused into the gate and up
    projections on CPUs, one kernel on GPUs); the model's own module for other activations."""
    if activation != "silu":
        return mlp(x)
    product = pointwise.silu_product(x, mlp.gate_proj, mlp.up_proj)
    return linear(product, mlp.down_proj.weight, mlp.down_proj.bias)


def _add_mlp_(
    hidden: torch.Tensor, mlp: torch.nn.Module, x: torch.Tensor, activation: str, pointwise: Pointwise
) -> None:
    """``hidden += mlp(x)``, in passes of ``MLP_CHUNK_TOKENS``."""
    for start in range(0, len(x), MLP_CHUNK_TOKENS):
        part = slice(start, start + MLP_CHUNK_TOKENS)
        hidden[part].add_(_mlp(mlp, x[part], activation, pointwise))


def packed_qwen3_pooled(
    model: torch.nn.Module,
    batch: PackedBatch,
    pointwise: Pointwise = EAGER,
    prefix_cache: PrefixCache | None = None,
) -> torch.Tensor:
    """Final-norm hidden state at each sequence's last token, ``(len(batch rows), hidden)``, in the
    caller's row order. ``pointwise`` runs the norms, RoPE and the MLP's gating: eager, or fused into
    single GPU kernels (``fused_pointwise.py``). Prefixes ``prefix_cache`` holds are read from it."""
    return packed_qwen3_forward(model, batch, pointwise, rows=batch.last_token, prefix_cache=prefix_cache)


def packed_qwen3_forward(
    model: torch.nn.Module,
    batch: PackedBatch,
    pointwise: Pointwise = EAGER,
    rows: torch.Tensor | None = None,
    prefix_cache: PrefixCache | None = None,
) -> torch.Tensor:
    """Final-norm hidden states at the packed tokens ``rows``, in that order (None: every token).
    The final layer runs past its attention on those tokens alone; its keys and values come from
    every token. Prefixes ``prefix_cache`` holds are read from it where no token of theirs is in
    ``rows``, and the prefixes it names that this batch computes are kept in it."""
    config = model.config
    device = model.embed_tokens.weight.device
    packed = batch.to(device)
    shared = SharedPrefixes.of(batch, cache=prefix_cache if rows is not None else None, read=rows)
    if shared is not None:  # the layers run on the nodes, attention on the packed tokens
        shared = shared.to(device)
    ids, positions = (packed.ids, packed.positions) if shared is None else (shared.ids, shared.positions)
    hidden = model.embed_tokens(ids)
    cos, sin = model.rotary_emb(hidden[None], positions[None])
    cos, sin = cos[0], sin[0]
    heads = (config.num_attention_heads, config.num_key_value_heads)
    *inner, final = model.layers
    for index, layer in enumerate(inner):
        attention, mlp = layer.self_attn, layer.mlp
        x = pointwise.rms_norm(hidden, layer.input_layernorm, attention.q_proj.weight.dtype)
        hidden.add_(_attention(attention, x, packed, cos, sin, heads, pointwise, shared, index))
        x = pointwise.rms_norm(hidden, layer.post_attention_layernorm, mlp.down_proj.weight.dtype)
        _add_mlp_(hidden, mlp, x, config.hidden_act, pointwise)
    kept = torch.arange(len(packed.ids), device=device) if rows is None else rows.to(device)
    attention, mlp = final.self_attn, final.mlp
    x = pointwise.rms_norm(hidden, final.input_layernorm, attention.q_proj.weight.dtype)
    hidden = hidden[kept if shared is None else shared.expand[kept]]  # a copy
    hidden.add_(_attention(attention, x, packed, cos, sin, heads, pointwise, shared, len(inner), rows=kept))
    # the eager steps on these rows, usually one per text: the fused kernels were compiled for
    # token counts, and one row (a lone text) would make the compiler specialise and compile again
    # while a request waits
    x = EAGER.rms_norm(hidden, final.post_attention_layernorm, mlp.down_proj.weight.dtype)
    _add_mlp_(hidden, mlp, x, config.hidden_act, EAGER)
    if shared is not None and prefix_cache is not None:
        shared.fill(prefix_cache)
    return model.norm(hidden)
