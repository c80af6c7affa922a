"""Qwen3's RMSNorms in one pass over memory each, on CPUs (``rms_norm.c``).

In the mixed-bf16 forward on CPUs the residual stream is float32 and the Linear layers bf16, and
each layer normalises twice for its Linear layers (``rms_norm``) and once per query and key head,
then rotates (``rotate_normed_``). Eager, those are casts, a norm, scales, ``torch.roll`` (a
concatenation) and multiply-adds: several passes each, about 11 % of the Qwen3-0.6B shape's
forward on 512-token documents once attention was fast (docs/benchmarks.md). The kernels do each
in one pass, in float32, rounding to bf16 once — the same arithmetic as the eager steps of
``qwen3_pointwise.py``, which call them where they apply and keep their own operators elsewhere.

The library is built, loaded and checked by ``native.py``, and serves only where the CPU has
AVX-512 with bf16 conversions; elsewhere, or with ``QWEMBED_FUSED_NORM=0`` (the switch of the
other fused norm, ``residual_norm.py``), the eager operators stay. Float32 models never reach it:
it writes bf16.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from . import native, residual_norm

log = logging.getLogger("qwembed.rms_norm")

SOURCE = Path(__file__).with_name("rms_norm.c")

#: widths the kernels take (the C code's limits): multiples of 32, heads of at most 256
MAX_HEAD_WIDTH = 256

#: largest error allowed in the load-time check, in units of the result's bf16 rounding step
#: (one step: rounding the float32 result to bf16 can land on either neighbour once the float32
#: values differ in their last bits, as two orders of the same arithmetic do)
CHECK_TOLERANCE = 1.0


class Library:
    """The loaded library: :meth:`rms_norm` and :meth:`rotate_normed_`."""

    def __init__(self, path: Path):
        library = native.open_on_torchs_threads(path, "qw_rms_threads")
        pointer, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
        # x, rows, width, weight, eps, out
        self._norm = native.function(library, "qw_rms_norm", pointer, i64, i32, pointer, f32, pointer)
        # heads, tokens, token stride, heads per token, width, weight, eps, cos, sin
        self._rotate = native.function(
            library, "qw_rotate_normed", pointer, i64, i64, i32, i32, pointer, f32, pointer, pointer
        )

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """``x · rsqrt(mean(x²) + eps) · weight`` over the rows of float32 ``x``, in bf16."""
        rows, width = x.shape
        out = torch.empty(rows, width, dtype=torch.bfloat16)
        with native.named_in_profiles("qwembed::rms_norm"):
            code = self._norm(x.data_ptr(), rows, width, weight.data_ptr(), eps, out.data_ptr())
        if code:
            raise ValueError(f"the fused RMSNorm takes widths that are multiples of 32, not {width}")
        return out

    def rotate_normed_(
        self, heads: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor
    ) -> None:
        """``heads ← RoPE(norm(heads))`` in place, bf16 ``(tokens, heads, width)`` with adjacent
        heads (a slice of the QKV projection); ``cos`` and ``sin`` float32 ``(tokens, width)``."""
        tokens, count, width = heads.shape
        args = (heads.data_ptr(), tokens, heads.stride(0), count, width, weight.data_ptr(), eps)
        with native.named_in_profiles("qwembed::rotate_normed"):
            code = self._rotate(*args, cos.data_ptr(), sin.data_ptr())
        if code:
            raise ValueError(f"the fused RoPE takes heads of 32, 64 … 256, not {width}")


def _bf16_steps(exact: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 values around each of ``exact``'s: its rounding step."""
    exponent = torch.frexp(exact.abs().clamp_min(2.0**-120))[1]
    return torch.ldexp(torch.ones_like(exact), exponent - 8)


def check(library: Library) -> float:
    """Largest error of either kernel against the same arithmetic in float64, in bf16 rounding
    steps of the exact result, on random rows and heads of two widths each."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for width in (1024, 64):
        x = torch.randn(37, width, generator=generator) * 3
        weight = torch.rand(width, generator=generator) * 2
        rows = x.double()
        exact = (rows * (rows.square().mean(-1, keepdim=True) + 1e-6).rsqrt() * weight.double()).float()
        got = library.rms_norm(x, weight, 1e-6).float()
        worst = max(worst, ((got - exact).abs() / _bf16_steps(exact)).max().item())
    for width in (128, 32):
        qkv = (torch.randn(29, 6, width, generator=generator) * 2).bfloat16()
        weight = torch.rand(width, generator=generator) * 2
        angles = torch.rand(29, width // 2, generator=generator).double() * 6.3
        cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
        heads = qkv[:, 1:4].double()
        normed = heads * (heads.square().mean(-1, keepdim=True) + 1e-6).rsqrt() * weight.double()
        half = width // 2
        rotated = torch.cat((-normed[..., half:], normed[..., :half]), -1)
        exact = (normed * cos[:, None] + rotated * sin[:, None]).float()
        untouched = qkv.clone()
        library.rotate_normed_(qkv[:, 1:4], weight, 1e-6, cos.float(), sin.float())
        if not (torch.equal(qkv[:, 0], untouched[:, 0]) and torch.equal(qkv[:, 4:], untouched[:, 4:])):
            return float("inf")  # it wrote outside the heads it was given
        worst = max(worst, ((qkv[:, 1:4].float() - exact).abs() / _bf16_steps(exact)).max().item())
    return worst


LIBRARY = native.Loader(
    name="fused RMSNorm kernels",
    fallback="RMSNorm and RoPE: PyTorch's operators",
    switch=residual_norm.ENV_SWITCH,
    source=SOURCE,
    open_library=Library,
    check=check,
    tolerance=CHECK_TOLERANCE,
    unit=" bf16 rounding steps",
    log=log,
)


def _plain(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu" and not (torch.is_grad_enabled() and tensor.requires_grad)


def rms_norm(x: torch.Tensor, norm: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor | None:
    """``norm(x)`` in bf16 by the kernel — a Qwen3RMSNorm over float32 rows for a bf16 Linear
    layer, on a CPU where it serves — else None."""
    weight = norm.weight
    fits = (
        dtype == torch.bfloat16
        and x.dtype == weight.dtype == torch.float32
        and x.dim() == 2
        and x.shape[1] % 32 == 0
        and weight.shape == (x.shape[1],)
        and x.is_contiguous()
        and _plain(x)
        and _plain(weight)
    )
    library = LIBRARY.get() if fits else None
    return None if library is None else library.rms_norm(x, weight, norm.variance_epsilon)


def rotate_normed_(heads: torch.Tensor, norm: torch.nn.Module, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """``heads ← RoPE(norm(heads))`` in place by the kernel where it fits — bf16 heads of a width
    it takes, adjacent within each token, float32 weight and tables, on a CPU where it serves;
    whether it did."""
    tokens, _, width = heads.shape
    weight = norm.weight
    fits = (
        heads.dtype == torch.bfloat16
        and weight.dtype == cos.dtype == sin.dtype == torch.float32
        and width % 32 == 0
        and width <= MAX_HEAD_WIDTH
        and heads.stride(2) == 1
        and heads.stride(1) == width
        and weight.shape == (width,)
        and cos.shape == sin.shape == (tokens, width)
        and cos.is_contiguous()
        and sin.is_contiguous()
        and _plain(heads)
        and _plain(weight)
    )
    library = LIBRARY.get() if fits else None
    if library is None:
        return False
    library.rotate_normed_(heads, weight, norm.variance_epsilon, cos, sin)
    return True
