"""Token-id sequences → the padded ``(rows, longest)`` tensors a transformer takes."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_token_ids(
    batch: Sequence[Sequence[int]], pad_id: int, *, left: bool, shape: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` as long tensors of ``shape`` (default: rows × longest). Left padding puts
    every sequence's last token in the last column (where Qwen3 pools and answers); rows beyond
    the batch are all padding."""
    rows, longest = shape or (len(batch), max(len(seq) for seq in batch))
    ids = torch.full((rows, longest), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, longest), dtype=torch.long)
    for row, seq in enumerate(batch):
        span = slice(longest - len(seq), longest) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each sequence's first real token, so a text sees the same (rotary)
    positions alone and inside a left-padded batch of longer texts."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)
