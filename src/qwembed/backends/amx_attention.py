"""Bidirectional attention of packed bf16 sequences on Intel AMX (``amx_attention.c``).

PyTorch's CPU attention runs bf16 heads of 32 (all-MiniLM-L6-v2, BGE-small) at about a sixth of
the matrix units' rate: its flash kernel computes an exact exponential per score and multiplies
through a general GEMM per block of 64 queries, so on 256-token documents attention took 30 % of
the mixed-bf16 forward for 10 % of its FLOPs (docs/benchmarks.md). No maintained library fills
the gap (oneDNN's graph API does not take varlen batches; Intel's extension for PyTorch is
discontinued), so this is ours: one small C file with AMX tile and AVX-512 intrinsics that takes
the packed projections and each sequence's bounds — no padding, no masks, no groups or tiles —
and runs one (sequence, head) at a time, cache-resident.

It is built at first use with the system's C compiler and cached (``native.py``), and checked
once against PyTorch's float32 attention before it serves. Where the CPU has no AMX,
no compiler is found, the build or the check fails, or ``QWEMBED_AMX_ATTENTION=0``,
:func:`kernel_for` answers None and PyTorch's kernel stays; the log says why once.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from . import native

log = logging.getLogger("qwembed.amx_attention")

#: set to 0 to keep PyTorch's attention on AMX CPUs (for comparison, or if the kernel misbehaves)
ENV_SWITCH = "QWEMBED_AMX_ATTENTION"

SOURCE = Path(__file__).with_name("amx_attention.c")
FLAGS = (*native.BASE_FLAGS, "-mamx-tile", "-mamx-bf16")

#: head widths the kernel handles (BERT-small shapes: 32; base and large: 64)
HEAD_WIDTHS = (32, 64)

#: largest difference allowed from PyTorch's float32 attention in the load-time check, on values
#: of unit scale; bf16 inputs and probabilities put PyTorch's own bf16 kernel at about 0.02
CHECK_TOLERANCE = 0.05


class Kernel:
    """The loaded library: :meth:`attend` is attention over packed sequences."""

    def __init__(self, path: Path):
        library = native.open_on_torchs_threads(path, "qw_amx_threads")
        if library.qw_amx_request() != 0:
            raise RuntimeError("the operating system refused AMX tile state (Linux ≥ 5.16 grants it)")
        pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        # qkv, out, bounds, sequences, q_heads, kv_heads, head width, scale
        self._attention = native.function(
            library, "qw_amx_attention", pointer, pointer, pointer, i64, i32, i32, i32, ctypes.c_float
        )

    def attend(
        self, qkv: torch.Tensor, bounds: torch.Tensor, q_heads: int, kv_heads: int, scale: float | None = None
    ) -> torch.Tensor:
        """Attention of ``qkv`` ``(tokens, q_heads + 2 × kv_heads, width)`` bf16 (queries, keys,
        values), sequence ``i`` being tokens ``bounds[i] : bounds[i + 1]`` → ``(tokens, q_heads ×
        width)`` bf16. The (sequence, head) pairs are split over torch's intra-op threads."""
        tokens, heads, width = qkv.shape
        if heads != q_heads + 2 * kv_heads or width not in HEAD_WIDTHS or qkv.dtype != torch.bfloat16:
            shape = f"{tuple(qkv.shape)} {qkv.dtype}"
            raise ValueError(f"unsupported attention shape {shape} for {q_heads} / {kv_heads} heads")
        qkv = qkv.contiguous()
        bounds = bounds.to(device="cpu", dtype=torch.int64).contiguous()
        out = torch.empty(tokens, q_heads * width, dtype=torch.bfloat16)
        sequences = len(bounds) - 1
        scale = width**-0.5 if scale is None else float(scale)
        args = (qkv.data_ptr(), out.data_ptr(), bounds.data_ptr(), sequences, q_heads, kv_heads, width, scale)
        with native.named_in_profiles("qwembed::amx_attention"):
            code = self._attention(*args)
        if code:
            raise MemoryError("the AMX attention kernel could not allocate its scratch memory")
        return out


def reference_attention(qkv: torch.Tensor, bounds: torch.Tensor, q_heads: int, kv_heads: int) -> torch.Tensor:
    """PyTorch's attention in float32, one sequence at a time (the check's reference, and the
    benchmark's)."""
    parts = []
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        q, k, v = qkv[start:stop].float().transpose(0, 1)[None].split([q_heads, kv_heads, kv_heads], dim=1)
        context = F.scaled_dot_product_attention(q, k, v, enable_gqa=q_heads != kv_heads)
        parts.append(context[0].transpose(0, 1).reshape(stop - start, -1))
    return torch.cat(parts)


def check(kernel: Kernel) -> float:
    """Largest difference from PyTorch's float32 attention on random sequences of awkward lengths
    (single tokens, tile edges), both head widths, with and without grouped keys."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for width, q_heads, kv_heads in ((32, 3, 3), (64, 4, 2)):
        bounds = torch.tensor([0, 1, 16, 17, 48, 81, 200]).cumsum(0)
        qkv = torch.randn(int(bounds[-1]), q_heads + 2 * kv_heads, width, generator=generator).bfloat16()
        got = kernel.attend(qkv, bounds, q_heads, kv_heads).float()
        worst = max(worst, (got - reference_attention(qkv, bounds, q_heads, kv_heads)).abs().max().item())
    return worst


KERNEL = native.Loader(
    name="AMX attention kernel",
    fallback="attention: PyTorch's kernel",
    switch=ENV_SWITCH,
    source=SOURCE,
    flags=FLAGS,
    cpu_flags=("amx_bf16", "amx_tile", "avx512_bf16"),
    open_library=Kernel,
    check=check,
    tolerance=CHECK_TOLERANCE,
    log=log,
)


def kernel() -> Kernel | None:
    """The checked kernel, or None (and why, in the log, once) where it cannot serve."""
    return KERNEL.get()


def kernel_for(qkv: torch.Tensor, *, causal: bool) -> Kernel | None:
    """The kernel where ``qkv`` goes to it — bidirectional bf16 attention on a CPU, in a head width
    it handles, on a machine where it built and passed its check — else None."""
    handled = (
        not causal
        and qkv.device.type == "cpu"
        and qkv.dtype == torch.bfloat16
        and qkv.shape[-1] in HEAD_WIDTHS
        and not (qkv.requires_grad and torch.is_grad_enabled())
    )
    return kernel() if handled else None
