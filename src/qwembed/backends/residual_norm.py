"""A BERT layer's residual add and LayerNorm in one pass over memory (``residual_norm.c``).

In the mixed-bf16 forward on CPUs the Linear layers are bf16 and the residual stream float32, so
each "add & norm" was five eager passes: widen the bf16 output, add, LayerNorm's two reads and a
write, then round to bf16 for the next Linear layer. With attention fast, those were a fifth of
all-MiniLM-L6-v2's time on short texts (docs/benchmarks.md). :func:`add_and_norm` does them in
one pass and hands back the bf16 copy too, which the next Linear layer takes as is.

The kernel is built, loaded and checked by ``native.py``, and serves only where the CPU has
AVX-512 with bf16 conversions; elsewhere, or with ``QWEMBED_FUSED_NORM=0``, the eager operators
stay. Float32 models never reach it: their Linear layers' outputs are float32.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from . import native

log = logging.getLogger("qwembed.residual_norm")

#: set to 0 to keep PyTorch's operators (for comparison, or if the kernel misbehaves)
ENV_SWITCH = "QWEMBED_FUSED_NORM"

SOURCE = Path(__file__).with_name("residual_norm.c")

#: largest difference allowed from PyTorch's float32 add + LayerNorm in the load-time check (the
#: same arithmetic in another order differs by about 1e-6 on unit-scale values)
CHECK_TOLERANCE = 1e-4


class Library:
    """The loaded library: :meth:`add_and_norm` on float32 rows and their bf16 update."""

    def __init__(self, path: Path):
        library = native.open_on_torchs_threads(path, "qw_norm_threads")
        pointer, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
        # hidden, delta, gamma, beta, rows, width, eps, rounded
        self._fused = native.function(
            library, "qw_residual_layernorm", pointer, pointer, pointer, pointer, i64, i32, f32, pointer
        )

    def add_and_norm(self, hidden: torch.Tensor, delta: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
        """``hidden ← norm(hidden + delta)`` in place; returns ``hidden`` rounded to bf16."""
        rows, width = hidden.shape
        rounded = torch.empty(rows, width, dtype=torch.bfloat16)
        tensors = (hidden.data_ptr(), delta.data_ptr(), norm.weight.data_ptr(), norm.bias.data_ptr())
        with native.named_in_profiles("qwembed::residual_layernorm"):
            code = self._fused(*tensors, rows, width, norm.eps, rounded.data_ptr())
        if code:
            raise ValueError(f"the fused add & norm takes widths that are multiples of 32, not {width}")
        return rounded


def check(library: Library) -> float:
    """Largest difference from PyTorch's float32 add + LayerNorm on random rows of two widths;
    infinite if the bf16 copy is not the result rounded to bf16."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.no_grad():  # the norm's parameters are filled in place
        for width in (384, 64):
            worst = max(worst, _check_width(library, width, generator))
    return worst


def _check_width(library: Library, width: int, generator: torch.Generator) -> float:
    norm = torch.nn.LayerNorm(width, eps=1e-12)
    norm.weight.copy_(torch.randn(width, generator=generator))
    norm.bias.copy_(torch.randn(width, generator=generator))
    hidden = torch.randn(37, width, generator=generator) * 3
    delta = torch.randn(37, width, generator=generator).bfloat16()
    expected = norm(hidden + delta.float())
    rounded = library.add_and_norm(hidden, delta, norm)
    if not torch.equal(rounded, hidden.bfloat16()):
        return float("inf")
    return (hidden - expected).abs().max().item()


LIBRARY = native.Loader(
    name="fused add & norm kernel",
    fallback="add & norm: PyTorch's operators",
    switch=ENV_SWITCH,
    source=SOURCE,
    open_library=Library,
    check=check,
    tolerance=CHECK_TOLERANCE,
    log=log,
)


def _fusable(hidden: torch.Tensor, delta: torch.Tensor, norm: torch.nn.Module) -> bool:
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    return (
        isinstance(norm, torch.nn.LayerNorm)
        and weight is not None
        and bias is not None
        and weight.dtype == bias.dtype == hidden.dtype == torch.float32
        and delta.dtype == torch.bfloat16
        and hidden.device.type == "cpu"
        and hidden.dim() == 2
        and hidden.shape == delta.shape
        and hidden.shape[1] % 32 == 0
        and tuple(norm.normalized_shape) == (hidden.shape[1],)
        and hidden.is_contiguous()
        and delta.is_contiguous()
        and not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad))
    )


def add_and_norm(
    hidden: torch.Tensor, delta: torch.Tensor, norm: torch.nn.Module
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``norm(hidden + delta)`` — ``hidden`` is the caller's to overwrite — and, where the fused
    kernel ran, the result in bf16 for the next Linear layer (else None)."""
    library = LIBRARY.get() if _fusable(hidden, delta, norm) else None
    if library is None:
        return norm(hidden.add_(delta)), None
    return hidden, library.add_and_norm(hidden, delta, norm)
