"""Packed batches: a batch's tokens in one ``(tokens, …)`` matrix, with no padding.

Every layer of a transformer except attention works token by token, so a padding-free forward
(``packed_bert.py``, ``packed_qwen3.py``) runs embeddings, Linear layers, activations and norms on
the packed tokens. Attention needs a padded ``(rows, length)`` view, and on a CPU it costs far more
than its FLOPs suggest for short sequences (PyTorch's flash kernel pays per row and head): padding
a window of a server's mixed-length requests to its longest row doubled its attention time. So
attention runs per *group* of rows of similar length, each padded only to its own longest row
(:func:`length_groups`). Tokens are laid out longest row first, which makes every group one
contiguous slice of the packed matrix, and a group of equal lengths a plain view with no copy.

Short rows go further: the kernel's cost per (row, head) pair, not FLOPs, is what a sentence of 15
tokens pays, so rows of at most ``TILE_TOKENS // 2`` tokens are laid side by side in *tiles* of
``TILE_TOKENS`` tokens — several sequences per attention row — with a block-diagonal mask that
keeps each sequence to its own tokens (:func:`tile_rows`). On 128 BQ sentences (12 heads, bf16)
that took attention from 6.2–8.7 ms to 3.6 ms per layer; the extra FLOPs are a rounding error
beside the Linear layers'.

On CPUs with AMX or AVX512-BF16, bf16 attention skips all of this where ``cpu_attention.py``
handles it (bidirectional BERT heads; without AMX also Qwen3's causal ones): it takes each
sequence by its bounds in the packed matrix, with no padding, groups or tiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import torch
import torch.nn.functional as F

from . import cpu_attention
from .base import TokenIds
from .shape_caches import token_bucket

#: a row joins the current attention group while it is at most this many tokens shorter than the
#: group's longest row, or at most a quarter shorter; beyond both, the padding costs more than
#: another attention call (measured on 128-row windows of BQ sentences: 1.5–2.4× faster attention
#: than one padded view, flat between 4 and 16 groups)
GROUP_SLACK_TOKENS = 8
GROUP_SLACK_SHARE = 0.25

#: attention-row width for short sequences; a row of at most half of it shares a tile with others
#: (BQ sentences, 128 rows: 32–128 measured, 64 best over mixed and sorted batches)
TILE_TOKENS = 64


def filled_to_bucket(
    batch: Sequence[TokenIds], token: int, max_length: int, device: torch.device
) -> list[TokenIds]:
    """``batch``, then on a CPU filler sequences of ``token`` (each at most ``max_length`` tokens)
    that bring its token count up to ``shape_caches.token_bucket``'s, so that oneDNN compiles each
    Linear layer's shape once for many batches rather than once per batch. The filler is a sequence
    of its own: attention keeps it to itself, and the caller drops its rows (those past
    ``len(batch)``). Other devices compile nothing per shape: ``batch`` as it is."""
    rows = list(batch)
    if device.type != "cpu":
        return rows
    tokens = sum(len(ids) for ids in rows)
    missing = token_bucket(tokens) - tokens
    while missing > 0:
        length = min(missing, max_length)
        rows.append([token] * length)
        missing -= length
    return rows


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


def tile_rows(lengths: Sequence[int], width: int = TILE_TOKENS) -> list[int]:
    """Where each row starts in tiles of ``width`` tokens (``tile × width + offset``), filling them
    in order; a row never straddles two tiles."""
    starts, tile, used = [], 0, 0
    for length in lengths:
        if used + length > width:
            tile, used = tile + 1, 0
        starts.append(tile * width + used)
        used += length
    return starts


@dataclass(frozen=True)
class AttentionGroup:
    """A contiguous slice of the packed tokens and its padded ``(rows, longest)`` view: one sequence
    per row (similar lengths), or several short sequences per row (a tile)."""

    start: int  # first token in the packed matrix
    stop: int
    rows: int
    longest: int
    slots: torch.Tensor | None  # each token's index in the (rows * longest) view; None: no padding
    # each slot's token (from ``start``); a padding slot repeats the group's first token, because
    # padding need only hold finite numbers (no real query sees it) and a gather beats zero-filling
    # and scattering (BQ tiles, 36 heads: 2.3 → 1.2 ms a layer)
    fill: torch.Tensor | None
    # what each query may see: (rows, 1, 1, longest) key mask of a bidirectional group, or a
    # tile's (rows, 1, longest, longest) block-diagonal mask; None: everything (causal: up to itself)
    allowed: torch.Tensor | None

    @classmethod
    def padded(
        cls, start: int, stop: int, rows: int, longest: int, slots: torch.Tensor, allowed: torch.Tensor | None
    ) -> AttentionGroup:
        """A group whose rows need padding: ``fill`` is derived from ``slots``."""
        fill = torch.zeros(rows * longest, dtype=torch.long)
        fill[slots] = torch.arange(stop - start)
        return cls(start, stop, rows, longest, slots, fill, allowed)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """This group's ``(tokens, …)`` slice → ``(rows, longest, …)``; padding slots hold copies of
        a real token, which the attention mask (or causality) keeps every real query from seeing."""
        tokens = packed[self.start : self.stop]
        if self.fill is not None:
            tokens = tokens.index_select(0, self.fill)
        return tokens.view(self.rows, self.longest, *packed.shape[1:])

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        flat = padded.reshape(self.rows * self.longest, *padded.shape[2:])
        # index_select, not flat[slots]: a plain row gather, ~4× faster than advanced indexing
        return flat if self.slots is None else flat.index_select(0, self.slots)

    def to(self, device: torch.device) -> AttentionGroup:
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return replace(self, slots=move(self.slots), fill=move(self.fill), allowed=move(self.allowed))


@dataclass(frozen=True)
class PackedBatch:
    """Where each sequence's tokens sit: packed longest row first, in attention groups; and the way
    back to the caller's row order, or to its padded ``(rows, longest)`` view."""

    ids: torch.Tensor  # (tokens,)
    positions: torch.Tensor  # (tokens,) position within its own sequence
    order: torch.Tensor  # (sequences,) the caller's row of each packed sequence
    bounds: torch.Tensor  # (sequences + 1,) packed sequence i is tokens bounds[i] : bounds[i + 1]
    groups: tuple[AttentionGroup, ...]
    rows: int
    longest: int

    @classmethod
    def of(cls, batch: list[list[int]], rows: int, longest: int, *, causal: bool = False) -> PackedBatch:
        """Pack ``batch`` for a ``(rows, longest)`` caller view; ``causal`` shapes the tiles' masks."""
        order = sorted(range(len(batch)), key=lambda r: len(batch[r]), reverse=True)
        sorted_lengths = [len(batch[r]) for r in order]
        lengths = torch.tensor(sorted_lengths, dtype=torch.long)
        ids = torch.tensor([token for r in order for token in batch[r]], dtype=torch.long)
        starts = torch.cumsum(lengths, 0) - lengths
        positions = torch.arange(len(ids)) - torch.repeat_interleave(starts, lengths)
        # rows short enough to share a tile (the shortest, at the end), or each its own row
        tiled = next((i for i, n in enumerate(sorted_lengths) if 2 * n <= TILE_TOKENS), len(batch))
        if len(batch) - tiled < 2:
            tiled = len(batch)  # a lone short row: a tile would only add padding
        groups = []
        for group in length_groups(sorted_lengths[:tiled]):
            start, stop = int(starts[group.start]), int(starts[group.stop - 1] + lengths[group.stop - 1])
            width, count = sorted_lengths[group.start], len(group)
            if sorted_lengths[group.stop - 1] == width:
                groups.append(AttentionGroup(start, stop, count, width, None, None, None))
                continue
            local_row = torch.repeat_interleave(torch.arange(count), lengths[group.start : group.stop])
            slots = local_row * width + positions[start:stop]
            allowed = None
            if not causal:  # causal rows are padded on the right, after every token they may see
                allowed = torch.zeros(count * width, dtype=torch.bool)
                allowed[slots] = True
                allowed = allowed.view(count, 1, 1, width)
            groups.append(AttentionGroup.padded(start, stop, count, width, slots, allowed))
        if tiled < len(batch):
            groups.append(cls._tile_group(sorted_lengths[tiled:], int(starts[tiled]), len(ids), causal))
        bounds = torch.cat((starts, torch.tensor([len(ids)])))
        caller_row = torch.tensor(order, dtype=torch.long)
        return cls(ids, positions, caller_row, bounds, tuple(groups), rows, longest)

    @staticmethod
    def _tile_group(lengths: list[int], start: int, stop: int, causal: bool) -> AttentionGroup:
        """Short sequences side by side in tiles of ``TILE_TOKENS``; each sees only itself."""
        width = TILE_TOKENS
        sizes = torch.tensor(lengths, dtype=torch.long)
        row_slot = torch.tensor(tile_rows(lengths, width), dtype=torch.long)
        packed_start = torch.cumsum(sizes, 0) - sizes  # each sequence's first token, from ``start``
        slots = torch.repeat_interleave(row_slot - packed_start, sizes) + torch.arange(stop - start)
        count = int(row_slot[-1]) // width + 1
        # each slot's sequence; padding slots get -1 and see each other, so no query row is empty
        sequence = torch.full((count * width,), -1, dtype=torch.long)
        sequence[slots] = torch.repeat_interleave(torch.arange(len(lengths)), sizes)
        sequence = sequence.view(count, width)
        allowed = sequence[:, :, None] == sequence[:, None, :]
        if causal:  # a sequence's tokens are in order within its tile
            allowed &= torch.ones(width, width, dtype=torch.bool).tril()
        return AttentionGroup.padded(start, stop, count, width, slots, allowed[:, None])

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(
            self.ids.to(device),
            self.positions.to(device),
            self.order.to(device),
            self.bounds.to(device),
            tuple(group.to(device) for group in self.groups),
            self.rows,
            self.longest,
        )

    @property
    def first_token(self) -> torch.Tensor:
        """Where each of the caller's rows starts in the packed tokens."""
        return self.in_caller_order(self.bounds[:-1])

    @property
    def last_token(self) -> torch.Tensor:
        """Where each of the caller's rows ends in the packed tokens."""
        return self.in_caller_order(self.bounds[1:] - 1)

    def in_caller_order(self, per_sequence: torch.Tensor) -> torch.Tensor:
        """``(sequences, …)`` values in packed order → the caller's row order."""
        return per_sequence.new_empty(per_sequence.shape).index_copy_(0, self.order, per_sequence)

    @cached_property
    def _caller_slots(self) -> torch.Tensor:
        """Each packed token's index in the caller's ``(rows * longest)`` view."""
        row = torch.repeat_interleave(self.order, self.bounds.diff())
        return row * self.longest + self.positions

    def mask(self) -> torch.Tensor:
        """The caller's ``(rows, longest)`` attention mask: 1 for real tokens."""
        mask = torch.zeros(self.rows * self.longest, dtype=torch.long, device=self.ids.device)
        mask[self._caller_slots] = 1
        return mask.view(self.rows, self.longest)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """``(tokens, …)`` → the caller's ``(rows, longest, …)`` with zeros in the padding."""
        out = packed.new_zeros((self.rows * self.longest, *packed.shape[1:]))
        out.index_copy_(0, self._caller_slots, packed)
        return out.view(self.rows, self.longest, *packed.shape[1:])


def grouped_attention(
    batch: PackedBatch,
    qkv: torch.Tensor,
    q_heads: int,
    kv_heads: int,
    *,
    causal: bool,
    scale: float | None = None,
) -> torch.Tensor:
    """Self-attention of packed projections ``(tokens, q_heads + 2 × kv_heads, head width)`` (queries,
    then keys, then values), group by group → ``(tokens, q_heads × head width)``. ``causal`` must
    match the ``PackedBatch.of`` call: a group without a mask is then plainly causal (its rows
    are padded on the right, after every real token), a tile's mask is causal already."""
    kernel = cpu_attention.kernel_for(qkv, causal=causal)
    if kernel is not None:  # every sequence by its bounds: no groups, no padding
        return kernel.attend(qkv, batch.bounds, q_heads, kv_heads, scale, causal=causal)
    width = qkv.shape[-1]
    parts = []
    for group in batch.groups:
        padded = group.pad(qkv).transpose(1, 2)  # (rows, heads, longest, width)
        q, k, v = padded.split([q_heads, kv_heads, kv_heads], dim=1)
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=group.allowed,
            is_causal=causal and group.allowed is None,
            scale=scale,
            enable_gqa=q_heads != kv_heads,
        )
        parts.append(group.unpad(context.transpose(1, 2).reshape(group.rows, group.longest, q_heads * width)))
    return parts[0] if len(parts) == 1 else torch.cat(parts)
