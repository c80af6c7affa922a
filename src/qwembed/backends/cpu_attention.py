"""Attention of packed bf16 sequences on CPUs with bf16 matrix instructions (``cpu_attention.c``):
Intel AMX, or AVX512-BF16 where there is no AMX (AMD Zen 4 and later).

PyTorch's CPU attention leaves most of those instructions' rate unused: its flash kernel runs
bf16 heads of 32 (all-MiniLM-L6-v2, BGE-small) at about a sixth of the matrix units' rate (an
exact exponential per score, a general GEMM per block of 64 queries), so on 256-token documents
attention took 30 % of the mixed-bf16 forward for 10 % of its FLOPs; and without AMX it runs
Qwen3's causal 128-wide heads at 10–20 % of the vector units' bf16 rate, 39 % of a 512-token
forward (docs/benchmarks.md). No maintained library fills the gap (oneDNN's graph API does not
take varlen batches; Intel's extension for PyTorch is discontinued), so this is ours: one small C
file that takes the packed projections and each sequence's bounds — no padding, no masks, no
groups or tiles — and runs one (sequence, key/value head) at a time, cache-resident. It builds in
two variants from the same source: the matrix products on AMX's tile unit (``-DQW_AMX``), or on
AVX512-BF16's ``vdpbf16ps``; the softmax, the layouts and the schedule are shared. :data:`KERNEL`
is the AMX variant on CPUs with AMX, else the other. What each handles (:meth:`Kernel.handles`):
the AMX build bidirectional heads of 32 and 64; the AVX512-BF16 build also heads of 128, and
causal attention (Qwen3). On AMX CPUs PyTorch's kernel keeps Qwen3's attention: its GEMMs reach
the tile unit through oneDNN there (attention was 14 % of a 512-token forward on an AMX Xeon,
against 39 % on a Zen 5), and the vector build's rate has not been measured on one.

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

#: head widths some build handles (BERT-small shapes: 32; base and large: 64; Qwen3: 128)
HEAD_WIDTHS = (32, 64, 128)

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
        # qkv, out, bounds, sequences, q_heads, kv_heads, head width, scale, causal
        self._attention = native.function(
            library, "qw_attention", pointer, pointer, pointer, i64, i32, i32, i32, ctypes.c_float, i32
        )
        handles = native.function(library, "qw_attention_handles", i32, i32)
        #: (head width, causal) pairs this build computes
        pairs = [(width, causal) for width in HEAD_WIDTHS for causal in (False, True)]
        self.handled = frozenset(pair for pair in pairs if handles(pair[0], int(pair[1])))

    def handles(self, width: int, causal: bool) -> bool:
        return (width, causal) in self.handled

    def attend(
        self,
        qkv: torch.Tensor,
        bounds: torch.Tensor,
        q_heads: int,
        kv_heads: int,
        scale: float | None = None,
        *,
        causal: bool = False,
    ) -> torch.Tensor:
        """Attention of ``qkv`` ``(tokens, q_heads + 2 × kv_heads, width)`` bf16 (queries, keys,
        values), sequence ``i`` being tokens ``bounds[i] : bounds[i + 1]`` → ``(tokens, q_heads ×
        width)`` bf16; ``causal``: each token sees its sequence up to itself. The (sequence,
        key/value head) items are split over torch's intra-op threads."""
        tokens, heads, width = qkv.shape
        if (
            heads != q_heads + 2 * kv_heads
            or q_heads % kv_heads
            or not self.handles(width, causal)
            or qkv.dtype != torch.bfloat16
        ):
            what = f"{tuple(qkv.shape)} {qkv.dtype}, {q_heads} / {kv_heads} heads, causal={causal}"
            raise ValueError(f"unsupported attention: {what}")
        qkv = qkv.contiguous()
        bounds = bounds.to(device="cpu", dtype=torch.int64).contiguous()
        out = torch.empty(tokens, q_heads * width, dtype=torch.bfloat16)
        sequences = len(bounds) - 1
        scale = width**-0.5 if scale is None else float(scale)
        args = (qkv.data_ptr(), out.data_ptr(), bounds.data_ptr(), sequences, q_heads, kv_heads, width, scale)
        with native.named_in_profiles("qwembed::cpu_attention"):
            code = self._attention(*args, int(causal))
        if code:
            raise MemoryError("the attention kernel could not allocate its scratch memory")
        return out


def reference_attention(
    qkv: torch.Tensor, bounds: torch.Tensor, q_heads: int, kv_heads: int, *, causal: bool = False
) -> torch.Tensor:
    """PyTorch's attention in float32, one sequence at a time (the check's reference, and the
    benchmark's)."""
    parts = []
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        q, k, v = qkv[start:stop].float().transpose(0, 1)[None].split([q_heads, kv_heads, kv_heads], dim=1)
        context = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q_heads != kv_heads)
        parts.append(context[0].transpose(0, 1).reshape(stop - start, -1))
    return torch.cat(parts)


#: the check's cases: (head width, query heads, key/value heads, causal)
CHECK_CASES = ((32, 3, 3, False), (64, 4, 2, False), (128, 4, 2, True), (128, 2, 1, False))


def check(kernel: Kernel) -> float:
    """Largest difference from PyTorch's float32 attention on random sequences of awkward lengths
    (single tokens, tile edges), in every head width and masking the build handles, with and
    without grouped keys."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for width, q_heads, kv_heads, causal in CHECK_CASES:
        if not kernel.handles(width, causal):
            continue
        bounds = torch.tensor([0, 1, 16, 17, 48, 81, 200]).cumsum(0)
        qkv = torch.randn(int(bounds[-1]), q_heads + 2 * kv_heads, width, generator=generator).bfloat16()
        got = kernel.attend(qkv, bounds, q_heads, kv_heads, causal=causal).float()
        exact = reference_attention(qkv, bounds, q_heads, kv_heads, causal=causal)
        worst = max(worst, (got - exact).abs().max().item())
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
    "AMX": _variant("AMX", AMX_FLAGS, ("amx_bf16", "amx_tile", *native.BASE_CPU_FLAGS)),
    "AVX512-BF16": _variant("AVX512-BF16", AVX512_BF16_FLAGS, native.BASE_CPU_FLAGS),
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
    """The kernel where ``qkv`` goes to it — bf16 attention on a CPU, in a head width and masking
    the machine's build handles, where it built and passed its check — else None."""
    handled = (
        qkv.device.type == "cpu"
        and qkv.dtype == torch.bfloat16
        and qkv.shape[-1] in HEAD_WIDTHS
        and not (qkv.requires_grad and torch.is_grad_enabled())
    )
    if not handled:
        return None
    loaded = kernel()
    return loaded if loaded is not None and loaded.handles(qkv.shape[-1], causal) else None
