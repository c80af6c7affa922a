"""Padding-free forward pass for BERT encoders (all-MiniLM, BGE, e5 …, ``model_type: bert``).

A padded batch of short texts of mixed length spends much of its compute on padding: requests of
32 BQ sentences, batched as a server receives them, carry 1.8 padded tokens per real one. Every
layer of BERT except attention works token by token, so here the batch's tokens are packed into
one ``(tokens, hidden)`` matrix for the embeddings, the Linear layers, GELU and the norms.

Attention needs a padded ``(rows, length)`` view, and on a CPU it costs far more than its FLOPs
suggest for short sequences (PyTorch's flash kernel pays per row and head): padding a window of
a server's mixed-length requests to its longest row doubled its attention time. So attention
runs per *group* of rows of similar length, each padded only to its own longest row (see
:func:`length_groups`). Tokens are laid out longest row first, which makes every group one
contiguous slice of the packed matrix, and a group of equal lengths a plain view with no copy.

The result is the same model function (equal to the padded pass within float rounding, tested);
the token embeddings are unpacked at the end, in the caller's row order, for sentence-transformers'
own pooling modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

#: a row joins the current attention group while it is at most this many tokens shorter than the
#: group's longest row, or at most a quarter shorter; beyond both, the padding costs more than
#: another attention call (measured on 128-row windows of BQ sentences: 1.5–2.4× faster attention
#: than one padded view, flat between 4 and 16 groups)
GROUP_SLACK_TOKENS = 8
GROUP_SLACK_SHARE = 0.25


def supports_packing(model: torch.nn.Module) -> bool:
    """Plain BERT with absolute positions: the architecture this module re-implements."""
    config = getattr(model, "config", None)
    return (
        config is not None
        and config.model_type == "bert"
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and config.hidden_act in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
        and not getattr(config, "is_decoder", False)
    )


def length_groups(lengths: Sequence[int]) -> list[range]:
    """Split lengths sorted longest first into runs that pad cheaply to their first element."""
    groups: list[range] = []
    start = 0
    for i, length in enumerate(lengths):
        longest = lengths[start]
        if longest - length > max(GROUP_SLACK_TOKENS, GROUP_SLACK_SHARE * longest):
            groups.append(range(start, i))
            start = i
    if lengths:
        groups.append(range(start, len(lengths)))
    return groups


@dataclass(frozen=True)
class AttentionGroup:
    """Rows of similar length: a contiguous slice of the packed tokens and its padded view."""

    start: int  # first token in the packed matrix
    stop: int
    rows: int
    longest: int
    slots: torch.Tensor | None  # each token's index in the (rows * longest) view; None: no padding
    allowed: torch.Tensor | None  # (rows, 1, 1, longest) key mask; None: no padding

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """This group's ``(tokens, …)`` slice → ``(rows, longest, …)``, zeros in the padding."""
        tokens = packed[self.start : self.stop]
        if self.slots is None:
            return tokens.view(self.rows, self.longest, *packed.shape[1:])
        out = packed.new_zeros((self.rows * self.longest, *packed.shape[1:]))
        out[self.slots] = tokens
        return out.view(self.rows, self.longest, *packed.shape[1:])

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        flat = padded.reshape(self.rows * self.longest, *padded.shape[2:])
        return flat if self.slots is None else flat[self.slots]

    def to(self, device: torch.device) -> AttentionGroup:
        if self.slots is None or self.allowed is None:
            return self
        return replace(self, slots=self.slots.to(device), allowed=self.allowed.to(device))


@dataclass(frozen=True)
class PackedBatch:
    """Where each sequence's tokens sit: packed longest row first, in attention groups, and in the
    caller's padded ``(rows, longest)`` view."""

    ids: torch.Tensor  # (tokens,)
    positions: torch.Tensor  # (tokens,) position within its own sequence
    flat_index: torch.Tensor  # (tokens,) row * longest + position: the caller's padded slot of each token
    mask: torch.Tensor  # (rows, longest) 1 for real tokens
    groups: tuple[AttentionGroup, ...]
    rows: int
    longest: int

    @classmethod
    def of(cls, batch: list[list[int]], rows: int, longest: int) -> PackedBatch:
        order = sorted(range(len(batch)), key=lambda r: len(batch[r]), reverse=True)
        sorted_lengths = [len(batch[r]) for r in order]
        lengths = torch.tensor(sorted_lengths, dtype=torch.long)
        ids = torch.tensor([token for r in order for token in batch[r]], dtype=torch.long)
        starts = torch.cumsum(lengths, 0) - lengths
        positions = torch.arange(len(ids)) - torch.repeat_interleave(starts, lengths)
        row_of = torch.repeat_interleave(torch.tensor(order, dtype=torch.long), lengths)
        mask = torch.zeros((rows, longest), dtype=torch.long)
        mask.view(-1)[row_of * longest + positions] = 1
        groups = []
        for group in length_groups(sorted_lengths):
            start, stop = int(starts[group.start]), int(starts[group.stop - 1] + lengths[group.stop - 1])
            width, count = sorted_lengths[group.start], len(group)
            if sorted_lengths[group.stop - 1] == width:
                groups.append(AttentionGroup(start, stop, count, width, None, None))
                continue
            local_row = torch.repeat_interleave(torch.arange(count), lengths[group.start : group.stop])
            slots = local_row * width + positions[start:stop]
            allowed = torch.zeros(count * width, dtype=torch.bool)
            allowed[slots] = True
            groups.append(AttentionGroup(start, stop, count, width, slots, allowed.view(count, 1, 1, width)))
        return cls(ids, positions, row_of * longest + positions, mask, tuple(groups), rows, longest)

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(
            self.ids.to(device),
            self.positions.to(device),
            self.flat_index.to(device),
            self.mask.to(device),
            tuple(group.to(device) for group in self.groups),
            self.rows,
            self.longest,
        )

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """``(tokens, …)`` → the caller's ``(rows, longest, …)`` with zeros in the padding."""
        out = packed.new_zeros((self.rows * self.longest, *packed.shape[1:]))
        out[self.flat_index] = packed
        return out.view(self.rows, self.longest, *packed.shape[1:])


def _activation(name: str):
    if name == "relu":
        return F.relu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    return F.gelu


def _attention(batch: PackedBatch, qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Self-attention of packed ``(tokens, 3 × hidden)`` projections, group by group."""
    width = qkv.shape[1] // 3
    parts = []
    for group in batch.groups:
        padded = group.pad(qkv).view(group.rows, group.longest, 3, heads, width // heads)
        q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)  # each (rows, heads, longest, head width)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=group.allowed)
        parts.append(group.unpad(context.transpose(1, 2).reshape(group.rows, group.longest, width)))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _fused_qkv(attention: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One ``(3 × hidden, hidden)`` projection for query, key and value: a single matmul is ~3×
    faster than three on a few thousand short-text tokens (AMX, bf16). The three Linear layers'
    weights are re-pointed at slices of the fused tensor, so it costs no memory, and the check
    below notices when something (a dtype cast, a device move) replaced them since."""
    projections = (attention.query, attention.key, attention.value)
    weight = projections[0].weight
    fused = getattr(attention, "_qwembed_fused_qkv", None)
    if fused is not None and all(
        p.weight.data_ptr() == fused[0][i * p.weight.shape[0]].data_ptr() and p.weight.dtype == fused[0].dtype
        for i, p in enumerate(projections)
    ):
        return fused
    with torch.no_grad():
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


def packed_bert_forward(bert: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Last hidden states of ``bert`` as a padded ``(rows, longest, hidden)`` tensor."""
    config = bert.config
    act = _activation(config.hidden_act)
    emb = bert.embeddings
    packed = batch.to(emb.word_embeddings.weight.device)
    hidden = (
        emb.word_embeddings(packed.ids)
        + emb.position_embeddings(packed.positions)
        + emb.token_type_embeddings.weight[0]  # single-segment inputs
    )
    hidden = emb.LayerNorm(hidden)
    for layer in bert.encoder.layer:
        qkv = F.linear(hidden, *_fused_qkv(layer.attention.self))
        context = _attention(packed, qkv, config.num_attention_heads)
        output = layer.attention.output
        hidden = output.LayerNorm(output.dense(context) + hidden)
        intermediate = act(layer.intermediate.dense(hidden))
        hidden = layer.output.LayerNorm(layer.output.dense(intermediate) + hidden)
    return packed.pad(hidden)
