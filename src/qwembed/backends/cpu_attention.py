"""Bidirectional attention of packed bf16 sequences on CPUs with bf16 matrix instructions
(``cpu_attention.c``): Intel AMX, or AVX512-BF16 where there is no AMX (AMD Zen 4 and later).

PyTorch's CPU attention runs bf16 heads of 32 (all-MiniLM-L6-v2, BGE-small) at about a sixth of
the matrix units' rate: its flash kernel computes an exact exponential per score and multiplies
through a general GEMM per block of 64 queries, so on 256-token documents attention took 30 % of
the mixed-bf16 forward for 10 % of its FLOPs (docs/benchmarks.md). No maintained library fills
the gap (oneDNN's graph API does not take varlen batches; Intel's extension for PyTorch is
discontinued), so this is ours: one small C file that takes the packed projections and each
sequence's bounds — no padding, no masks, no groups or tiles — and runs one (sequence, head) at a
time, cache-resident. It builds in two variants from the same source: the matrix products on
AMX's tile unit (``-DQW_AMX``), or on AVX512-BF16's ``vdpbf16ps``; the softmax, the layouts and
the schedule are shared. :data:`KERNEL` is the AMX variant on CPUs with AMX, else the other.

It is built at first use with the system's C compiler and cached (``native.py``), and checked
once against PyTorch's float32 attention before it serves. Where the CPU has neither, no
compiler is found, the build or the check fails, or ``QWEMBED_CPU_ATTENTION=0``,
:func:`kernel_for` answers None and PyTorch's kernel stays; the log says why once.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from . import native

log = logging.getLogger("qwembed.cpu_attention")

#: set to 0 to keep PyTorch's attention (for comparison, or if the kernel misbehaves)
ENV_SWITCH = "QWEMBED_CPU_ATTENTION"

SOURCE = Path(__file__).with_name("cpu_attention.c")
AMX_FLAGS = (*native.BASE_FLAGS, "-mamx-tile", "-mamx-bf16", "-DQW_AMX")
AVX512_BF16_FLAGS = native.BASE_FLAGS

#: head widths the kernel handles (BERT-small shapes: 32; base and large: 64)
HEAD_WIDTHS = (32, 64)

#: largest difference allowed from PyTorch's float32 attention in the load-time check, on values
#: of unit scale; bf16 inputs and probabilities put PyTorch's own bf16 kernel at about 0.02
CHECK_TOLERANCE = 0.05


class Kernel:
    """The loaded library: :meth:`attend` is attention over packed sequences."""

    def __init__(self, path: Path):
        library = native.open_on_torchs_threads(path, "qw_attention_threads")
        if hasattr(library, "qw_amx_request") and library.qw_amx_request() != 0:  # the AMX build
            raise RuntimeError("the operating system refused AMX tile state (Linux ≥ 5.16 grants it)")
        pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        # qkv, out, bounds, sequences, q_heads, kv_heads, head width, scale
        self._attention = native.function(
            library, "qw_attention", pointer, pointer, pointer, i64, i32, i32, i32, ctypes.c_float
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
        with native.named_in_profiles("qwembed::cpu_attention"):
            code = self._attention(*args)
        if code:
            raise MemoryError("the attention kernel could not allocate its scratch memory")
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


def _variant(name: str, flags: tuple[str, ...], cpu_flags: tuple[str, ...]) -> native.Loader[Kernel]:
    return native.Loader(
        name=f"attention kernel ({name})",
        fallback="attention: PyTorch's kernel",
        switch=ENV_SWITCH,
        source=SOURCE,
        flags=flags,
        cpu_flags=cpu_flags,
        open_library=Kernel,
        check=check,
        tolerance=CHECK_TOLERANCE,
        log=log,
    )


#: each build of the kernel, by the CPU feature it multiplies with; tests check every one the
#: machine runs (an AMX CPU runs both)
VARIANTS = {
    "AMX": _variant("AMX", AMX_FLAGS, ("amx_bf16", "amx_tile", "avx512_bf16")),
    "AVX512-BF16": _variant("AVX512-BF16", AVX512_BF16_FLAGS, ("avx512_bf16",)),
}

#: the variant this machine serves with: AMX where the CPU has it (the tile unit is several times
#: the vector units' bf16 rate), else AVX512-BF16, which says why it cannot serve on older CPUs
KERNEL = next(
    (v for v in VARIANTS.values() if native.unsupported_machine(v.cpu_flags) is None), VARIANTS["AVX512-BF16"]
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
