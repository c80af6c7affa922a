"""Qwen3's element-wise steps between its matrix multiplications, in few passes over memory.

Hugging Face's Qwen3 layer normalises the query and key heads (RMSNorm over each head) and rotates
them (RoPE) in about fifteen element-wise kernels, each a full pass over the projections, several
of them mixing bf16 and float32, which falls off PyTorch's vectorised loops; ``torch.cat`` then
builds the attention input. On the 0.6B shape with 512-token documents on a CPU they took a third
of the packed forward, against 56 % for the Linear layers (docs/profiles/qwen3-0.6b-cpu-long-docs.txt).

Here each step is a handful of same-dtype passes, and the results are written where they are used:

- ``rms_norm`` casts once, to the dtype of the Linear layer that reads it (no cast inside it);
- ``rotate_normed_`` normalises and rotates query or key heads in place, inside the QKV
  projection's output, which is then the attention input as it stands (no ``torch.cat``). The
  norm's weight is folded into the rotation's cos and sin tables, ``(tokens, width)``, so it costs
  no pass over the heads.

Both compute in float32 and round once at the end; Hugging Face rounds the normalised heads to
the input dtype before the weight and RoPE, so under bf16 the two differ by bf16 rounding (tested
against it in float32 to float rounding). In the mixed-bf16 forward on CPUs with AVX-512 and bf16
conversions each is one C kernel's single pass instead (``rms_norm.py``: the same arithmetic),
where it fits; these operators stay for everything else.
"""

from __future__ import annotations

import torch

from . import rms_norm as kernels
from .fused_linear import linear_activation, linear_times


def _inverse_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 / sqrt(mean(x²) + eps)`` over the last dim, keepdim: one reading pass (a norm) instead
    of ``pow`` and ``mean``, which write and read a full-size square."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return norm.square_().div_(x.shape[-1]).add_(eps).rsqrt_()


def rms_norm(x: torch.Tensor, norm: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """``norm(x)`` for a ``Qwen3RMSNorm`` (``weight``, ``variance_epsilon``), computed in float32 and
    returned in ``dtype``: the dtype of the Linear layer that reads it."""
    fused = kernels.rms_norm(x, norm, dtype)
    if fused is not None:
        return fused
    h = x.float()
    inverse = _inverse_rms(h, norm.variance_epsilon)
    # under bf16 ``h`` is a copy, scaled in place (one float32 buffer: 168 MB less at a GPU batch
    # of 16k tokens of the 4B shape); under float32 it is ``x`` itself, the residual stream
    out = h * inverse if h is x else h.mul_(inverse)
    return out.mul_(norm.weight.float()).to(dtype)


#: tokens normalised and rotated per pass: the pass holds two float32 copies of its heads, which at
#: a GPU batch of 16k tokens of the 4B shape's 32 query heads came to 2 × 268 MB, the forward's
#: peak (bench/activation_memory.py). CPU batches (2,048 tokens) take one pass.
ROTATE_CHUNK_TOKENS = 4096


def rotate_normed_(heads: torch.Tensor, norm: torch.nn.Module, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """``heads ← RoPE(norm(heads))`` in place. ``heads`` is ``(tokens, heads, width)``, usually a
    view into the QKV projection; ``cos`` and ``sin`` are the rotary tables, ``(tokens, width)``."""
    if kernels.rotate_normed_(heads, norm, cos, sin):
        return
    half = heads.shape[-1] // 2
    weight = norm.weight.float()
    # RoPE(w ⊙ n) = (w ⊙ n) · cos + rotate(w ⊙ n) · sin, where rotate(y) = (−y₂, y₁) on the halves;
    # rotate(w ⊙ n) = swap(w) ⊙ (∓1) ⊙ swap(n), so both weights go into the tables.
    swapped = torch.cat((-weight[half:], weight[:half]))
    for start in range(0, len(heads), ROTATE_CHUNK_TOKENS):
        part = slice(start, start + ROTATE_CHUNK_TOKENS)
        cos_w = (cos[part].float() * weight)[:, None]
        sin_w = (sin[part].float() * swapped)[:, None]
        h = heads[part].float()  # a copy under bf16; under float32, the heads themselves, read first
        h.mul_(_inverse_rms(h, norm.variance_epsilon))
        rotated = torch.roll(h, half, dims=-1)  # (n₂, n₁)
        heads[part].copy_(rotated.mul_(sin_w).addcmul_(h, cos_w))
        del h, rotated  # freed before the next pass allocates its own


class Pointwise:
    """The element-wise steps of a packed Qwen3 layer, eager: few passes each, float32 inside, the
    activation fused into the Linear layers on CPUs (``fused_linear.py``). ``fused_pointwise.py``
    has the GPU's single-kernel versions behind the same methods."""

    def rms_norm(self, x: torch.Tensor, norm: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
        return rms_norm(x, norm, dtype)

    def rotate_normed_(
        self, heads: torch.Tensor, norm: torch.nn.Module, cos: torch.Tensor, sin: torch.Tensor
    ) -> None:
        rotate_normed_(heads, norm, cos, sin)

    def silu_product(self, x: torch.Tensor, gate: torch.nn.Linear, up: torch.nn.Linear) -> torch.Tensor:
        """``silu(gate(x)) * up(x)``: a SwiGLU MLP's input to its down projection. The activated
        gate is a temporary, freed on return."""
        return linear_times(x, up, linear_activation(x, gate, "silu"))


#: the eager steps, for CPUs and for GPUs where ``fused_pointwise`` does not apply
EAGER = Pointwise()
