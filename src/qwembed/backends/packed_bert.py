"""Padding-free forward pass for BERT encoders (all-MiniLM, BGE, e5 …, ``model_type: bert``).

A padded batch of short texts of mixed length spends much of its compute on padding: requests of
32 BQ sentences, batched as a server receives them, carry 1.8 padded tokens per real one. Every
layer of BERT except attention works token by token, so here the batch's tokens are packed into
one ``(tokens, hidden)`` matrix for the embeddings, the Linear layers, GELU and the norms, and only
attention — a small share of the work for short texts — sees the padded ``(batch, length)`` view.
The result is the same model function (equal to the padded pass within float rounding, tested);
the token embeddings are unpacked at the end for sentence-transformers' own pooling modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


@dataclass(frozen=True)
class PackedBatch:
    """Where each sequence's tokens sit in the packed and in the padded view."""

    ids: torch.Tensor  # (tokens,)
    positions: torch.Tensor  # (tokens,) position within its own sequence
    flat_index: torch.Tensor  # (tokens,) row * longest + position: the padded slot of each token
    mask: torch.Tensor  # (rows, longest) 1 for real tokens
    rows: int
    longest: int

    @classmethod
    def of(cls, batch: list[list[int]], rows: int, longest: int) -> PackedBatch:
        lengths = torch.tensor([len(ids) for ids in batch])
        ids = torch.tensor([token for seq in batch for token in seq], dtype=torch.long)
        starts = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        positions = torch.arange(len(ids)) - starts
        row_of = torch.repeat_interleave(torch.arange(len(batch)), lengths)
        mask = torch.zeros((rows, longest), dtype=torch.long)
        mask.view(-1)[row_of * longest + positions] = 1
        return cls(ids, positions, row_of * longest + positions, mask, rows, longest)

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(
            self.ids.to(device),
            self.positions.to(device),
            self.flat_index.to(device),
            self.mask.to(device),
            self.rows,
            self.longest,
        )

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """``(tokens, …)`` → ``(rows, longest, …)`` with zeros in the padding."""
        out = packed.new_zeros((self.rows * self.longest, *packed.shape[1:]))
        out[self.flat_index] = packed
        return out.view(self.rows, self.longest, *packed.shape[1:])

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        return padded.reshape(self.rows * self.longest, *padded.shape[2:])[self.flat_index]


def _activation(name: str):
    if name == "relu":
        return F.relu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    return F.gelu


def packed_bert_forward(bert: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Last hidden states of ``bert`` as a padded ``(rows, longest, hidden)`` tensor."""
    config = bert.config
    heads = config.num_attention_heads
    width = config.hidden_size // heads
    act = _activation(config.hidden_act)
    emb = bert.embeddings
    packed = batch.to(emb.word_embeddings.weight.device)
    hidden = (
        emb.word_embeddings(packed.ids)
        + emb.position_embeddings(packed.positions)
        + emb.token_type_embeddings.weight[0]  # single-segment inputs
    )
    hidden = emb.LayerNorm(hidden)
    # key padding mask for attention: (rows, 1, 1, longest), True where attending is allowed
    allowed = packed.mask.bool()[:, None, None, :]
    for layer in bert.encoder.layer:
        attention = layer.attention.self
        qkv = [packed.pad(proj(hidden)) for proj in (attention.query, attention.key, attention.value)]
        q, k, v = (x.view(packed.rows, packed.longest, heads, width).transpose(1, 2) for x in qkv)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        context = packed.unpad(context.transpose(1, 2).reshape(packed.rows, packed.longest, heads * width))
        output = layer.attention.output
        hidden = output.LayerNorm(output.dense(context) + hidden)
        intermediate = act(layer.intermediate.dense(hidden))
        hidden = layer.output.LayerNorm(layer.output.dense(intermediate) + hidden)
    return packed.pad(hidden)
