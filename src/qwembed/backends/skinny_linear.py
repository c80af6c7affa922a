"""Linear layers of a few rows at the speed of reading their weights (``skinny_linear.c``).

A lone instructed query to a Qwen3 model computes five or six tokens of its own once its
instruction comes from the prefix cache (``prefix_cache.py``), and every batch's last layer one row
per text. With so few rows a Linear layer's time is that of reading its weights, and oneDNN read
them at under half the memory's speed on a 2-core Zen 4 VM: 12-19 GB/s in bf16 against the
kernel's 29-38, for 1 to 8 rows of the Qwen3-0.6B shape's layers; 18 against 36 GB/s in float32
at 6 rows. The kernel streams each weight once, with a software prefetch, and keeps the rows'
products in registers; ``fused_linear.py`` hands it every Linear layer of at most
:func:`max_rows` rows in its precision.

Two builds, each loaded and checked by ``native.py``: bf16 where the CPU has AVX-512 with bf16 dot
products, float32 (for models kept exact) where it has AVX2 and FMA. ``QWEMBED_SKINNY_LINEAR=0``
keeps oneDNN for every size.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache
from pathlib import Path

import torch

from . import native

log = logging.getLogger("qwembed.skinny_linear")

SOURCE = Path(__file__).with_name("skinny_linear.c")

ENV_SWITCH = "QWEMBED_SKINNY_LINEAR"

#: bf16: rows up to which the kernel beats oneDNN on a CPU without AMX: the 0.6B shape's five
#: Linear layers × 28 on a 2-core Zen 4 ran 2.1-2.7× oneDNN's speed at 1-12 rows, 1.4× at 32,
#: 1.14× at 48, 1.06× at 64, even at 96 (bench/bench_skinny_linear.py, docs/benchmarks.md)
MAX_ROWS_BF16 = 48

#: the same where oneDNN multiplies on AMX, which computes several times faster than this kernel's
#: AVX-512: at 8 rows the kernel still waits on memory, not on its products (7 GFLOP per forward of
#: the 0.6B shape against ~330 GFLOP/s), so reading speed still decides. An estimate: no AMX CPU
#: was at hand to measure it.
MAX_ROWS_BF16_WITH_AMX = 8

#: float32: on the same VM 1.4-2.1× oneDNN at 1-12 rows, 1.1× at 24, 0.95× at 48. AVX2 computes
#: at half the rate of an Intel CPU's two AVX-512 units, where oneDNN would catch up sooner: 16
#: keeps to the rows that wait on memory on either.
MAX_ROWS_FLOAT32 = 16

#: the C code's limits: input features a multiple of 32, output features of 4
IN_MULTIPLE, OUT_MULTIPLE = 32, 4

#: post-ops, as the C code numbers them
EPILOGUES = {"none": 0, "silu": 1, "times": 2}

#: largest error allowed in the load-time check, in rounding steps of the exact result in the
#: kernel's precision: bf16, one step (two orders of the same float32 sums may round to either
#: neighbour); float32, where the sums' own rounding shows, 256 steps (a relative 1.5e-5: oneDNN's
#: float32 matmul is off by 107 on the check's inputs, the kernel by 54)
CHECK_TOLERANCE = {torch.bfloat16: 1.0, torch.float32: 256.0}

#: mantissa bits of each precision, for its rounding step
_MANTISSA_BITS = {torch.bfloat16: 8, torch.float32: 24}

#: the float32 build: AVX2 and FMA only, so that it runs on any x86-64 CPU of the last decade
FLOAT32_FLAGS = ("-O3", "-fPIC", "-shared", "-fopenmp", "-mavx2", "-mfma")


class Library:
    """A loaded build: :meth:`linear` in its precision (``dtype``)."""

    def __init__(self, path: Path, dtype: torch.dtype):
        library = native.open_on_torchs_threads(path, "qw_skinny_threads")
        pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        symbol = "qw_skinny_linear" if dtype == torch.bfloat16 else "qw_skinny_linear_f32"
        # x, rows, in features, weight, out features, bias, epilogue, other, out
        self._linear = native.function(
            library, symbol, pointer, i64, i64, pointer, i64, pointer, i32, pointer, pointer
        )
        self.dtype = dtype

    def linear(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        epilogue: str = "none",
        other: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``epilogue(x @ weight.T + bias)``, all operands contiguous, in the build's precision;
        ``other`` is the factor of ``epilogue="times"``."""
        rows, in_features = x.shape
        out_features = weight.shape[0]
        out = torch.empty(rows, out_features, dtype=self.dtype)
        with native.named_in_profiles("qwembed::skinny_linear"):
            code = self._linear(
                x.data_ptr(),
                rows,
                in_features,
                weight.data_ptr(),
                out_features,
                None if bias is None else bias.data_ptr(),
                EPILOGUES[epilogue],
                None if other is None else other.data_ptr(),
                out.data_ptr(),
            )
        if code:
            widths = f"{in_features} input and {out_features} output features"
            raise ValueError(f"the skinny Linear kernel takes multiples of 32 and 4, not {widths}")
        return out


def rounding_steps(exact: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` values around each of ``exact``'s (of a sixteenth of its row's RMS
    where it is smaller: a sum that cancels to near zero keeps float32's absolute error)."""
    scale = exact.square().mean(-1, keepdim=True).sqrt() / 16
    magnitude = torch.maximum(exact.abs(), scale).clamp_min(2.0**-120)
    return torch.ldexp(torch.ones_like(magnitude), torch.frexp(magnitude)[1] - _MANTISSA_BITS[dtype])


def check(library: Library) -> float:
    """Largest error against the same arithmetic in float64, in rounding steps of the exact result
    in the build's precision, over row counts on both sides of a tile, every epilogue, with and
    without a bias."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for rows in (1, 2, 5, 6, 13):
        x = torch.randn(rows, 96, generator=generator).to(library.dtype)
        weight = (torch.randn(40, 96, generator=generator) / 10).to(library.dtype)
        bias = torch.randn(40, generator=generator).to(library.dtype)
        other = torch.randn(rows, 40, generator=generator).to(library.dtype)
        for epilogue in EPILOGUES:
            for with_bias in (bias, None):
                exact = x.double() @ weight.double().T
                if with_bias is not None:
                    exact = exact + with_bias.double()
                if epilogue == "silu":
                    exact = torch.nn.functional.silu(exact)
                elif epilogue == "times":
                    exact = exact * other.double()
                factor = other if epilogue == "times" else None
                got = library.linear(x, weight, with_bias, epilogue, factor).double()
                worst = max(worst, ((got - exact).abs() / rounding_steps(exact, library.dtype)).max().item())
    return worst


def _build(dtype: torch.dtype, flags: tuple[str, ...], cpu_flags: tuple[str, ...]) -> native.Loader[Library]:
    name = "bf16" if dtype == torch.bfloat16 else "float32"
    return native.Loader(
        name=f"skinny Linear kernel ({name})",
        fallback=f"{name} Linear layers of few rows: oneDNN",
        switch=ENV_SWITCH,
        source=SOURCE,
        flags=flags,
        cpu_flags=cpu_flags,
        open_library=lambda path: Library(path, dtype),
        check=check,
        tolerance=CHECK_TOLERANCE[dtype],
        log=log,
    )


#: each precision's build; tests check every one the machine runs
BUILDS = {
    torch.bfloat16: _build(torch.bfloat16, native.BASE_FLAGS, native.BASE_CPU_FLAGS),
    torch.float32: _build(torch.float32, FLOAT32_FLAGS, ("avx2", "fma")),
}


@cache  # (asked on every Linear layer's call; the CPU does not change)
def max_rows(dtype: torch.dtype) -> int:
    """Rows up to which a Linear layer in ``dtype`` goes to the kernel on this CPU."""
    if dtype == torch.float32:
        return MAX_ROWS_FLOAT32
    return MAX_ROWS_BF16_WITH_AMX if torch.cpu._is_amx_tile_supported() else MAX_ROWS_BF16


def _fits(tensor: torch.Tensor | None, dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
    return tensor is None or (
        tensor.dtype == dtype
        and tuple(tensor.shape) == shape
        and tensor.device.type == "cpu"
        and tensor.is_contiguous()
        and not (torch.is_grad_enabled() and tensor.requires_grad)
    )


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    epilogue: str = "none",
    other: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``epilogue(x @ weight.T + bias)`` by the kernel where it serves and the layer fits — ``x``
    of at most :func:`max_rows` rows, every operand in the weight's precision (bf16 or float32),
    widths the kernel takes — else None."""
    build = BUILDS.get(weight.dtype)
    if build is None or weight.dim() != 2 or x.dim() != 2 or not 0 < len(x) <= max_rows(weight.dtype):
        return None
    out_features, in_features = weight.shape
    x = x.contiguous()  # (a few rows: the copy, where there is one, costs nothing)
    fits = (
        in_features % IN_MULTIPLE == 0
        and out_features % OUT_MULTIPLE == 0
        and _fits(weight, weight.dtype, (out_features, in_features))
        and _fits(x, weight.dtype, (len(x), in_features))
        and _fits(bias, weight.dtype, (out_features,))
        and _fits(other, weight.dtype, (len(x), out_features))
    )
    library = build.get() if fits else None
    return None if library is None else library.linear(x, weight, bias, epilogue, other)
