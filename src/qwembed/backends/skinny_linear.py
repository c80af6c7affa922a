"""bf16 Linear layers for a few rows at a time, at the speed of reading their weights (``skinny_linear.c``).

A lone instructed query to a Qwen3 model computes five or six tokens of its own once its
instruction comes from the prefix cache (``prefix_cache.py``), and every batch's last layer one row
per text. With so few rows a Linear layer's time is that of reading its weights, and oneDNN's
bf16 matmul on plain weights read them at under half the memory's speed on a 2-core Zen 4 VM
(12-19 GB/s against 29-38 here, for 1 to 8 rows of the Qwen3-0.6B shape's layers). The kernel
streams each weight once, with a software prefetch, and keeps the rows' products in registers;
``fused_linear.py`` hands it every bf16 Linear layer of at most :func:`max_rows` rows.

Built, loaded and checked by ``native.py``; serves only where the CPU has AVX-512 with bf16 dot
products. ``QWEMBED_SKINNY_LINEAR=0`` keeps oneDNN for every size.
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

#: rows up to which the kernel beats oneDNN on a CPU without AMX: the 0.6B shape's five Linear
#: layers × 28 on a 2-core Zen 4 ran 2.1-2.7× oneDNN's speed at 1-12 rows, 1.4× at 32, 1.14× at
#: 48, 1.06× at 64, even at 96 (bench/bench_skinny_linear.py, docs/benchmarks.md)
MAX_ROWS = 48

#: the same where oneDNN multiplies on AMX, which computes several times faster than this kernel's
#: AVX-512: at 8 rows the kernel still waits on memory, not on its products (7 GFLOP per forward of
#: the 0.6B shape against ~330 GFLOP/s), so reading speed still decides. An estimate: no AMX CPU
#: was at hand to measure it.
MAX_ROWS_WITH_AMX = 8

#: the C code's limits: input features a multiple of 32, output features of 4
IN_MULTIPLE, OUT_MULTIPLE = 32, 4

#: post-ops, as the C code numbers them
EPILOGUES = {"none": 0, "silu": 1, "times": 2}

#: largest error allowed in the load-time check, in bf16 rounding steps of the exact result (one
#: step: two orders of the same float32 sums may round to either neighbour)
CHECK_TOLERANCE = 1.0


@cache
def max_rows() -> int:
    """Rows up to which a Linear layer goes to the kernel on this CPU."""
    return MAX_ROWS_WITH_AMX if torch.cpu._is_amx_tile_supported() else MAX_ROWS


class Library:
    """The loaded kernel: :meth:`linear`."""

    def __init__(self, path: Path):
        library = native.open_on_torchs_threads(path, "qw_skinny_threads")
        pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        # x, rows, in features, weight, out features, bias, epilogue, other, out
        self._linear = native.function(
            library, "qw_skinny_linear", pointer, i64, i64, pointer, i64, pointer, i32, pointer, pointer
        )

    def linear(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        epilogue: str = "none",
        other: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``epilogue(x @ weight.T + bias)`` in bf16, all operands contiguous bf16; ``other`` is
        the factor of ``epilogue="times"``."""
        rows, in_features = x.shape
        out_features = weight.shape[0]
        out = torch.empty(rows, out_features, dtype=torch.bfloat16)
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


def _bf16_steps(exact: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 values around each of ``exact``'s: its rounding step."""
    exponent = torch.frexp(exact.abs().clamp_min(2.0**-120))[1]
    return torch.ldexp(torch.ones_like(exact), exponent - 8)


def check(library: Library) -> float:
    """Largest error against the same arithmetic in float64, in bf16 rounding steps of the exact
    result (of a sixteenth of its row's RMS where it is smaller: a sum that cancels to near zero
    keeps float32's absolute error), over row counts on both sides of a tile, every epilogue, with
    and without a bias."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for rows in (1, 5, 6, 13):
        x = torch.randn(rows, 96, generator=generator).bfloat16()
        weight = (torch.randn(40, 96, generator=generator) / 10).bfloat16()
        bias = torch.randn(40, generator=generator).bfloat16()
        other = torch.randn(rows, 40, generator=generator).bfloat16()
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
                scale = exact.square().mean(-1, keepdim=True).sqrt() / 16
                steps = _bf16_steps(torch.maximum(exact.abs(), scale))
                worst = max(worst, ((got - exact).abs() / steps).max().item())
    return worst


LIBRARY = native.Loader(
    name="skinny Linear kernel",
    fallback="Linear layers of few rows: oneDNN",
    switch=ENV_SWITCH,
    source=SOURCE,
    open_library=Library,
    check=check,
    tolerance=CHECK_TOLERANCE,
    log=log,
)


def _fits(tensor: torch.Tensor | None, shape: tuple[int, ...]) -> bool:
    return tensor is None or (
        tensor.dtype == torch.bfloat16
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
    """``epilogue(x @ weight.T + bias)`` by the kernel where it serves and the layer fits — bf16
    ``x`` of at most :func:`max_rows` rows, a bf16 weight of the widths it takes — else None."""
    if weight.dim() != 2 or x.dim() != 2 or len(x) > max_rows():
        return None
    out_features, in_features = weight.shape
    x = x.contiguous()  # (a few rows: the copy, where there is one, costs nothing)
    fits = (
        in_features % IN_MULTIPLE == 0
        and out_features % OUT_MULTIPLE == 0
        and len(x) > 0
        and _fits(weight, (out_features, in_features))
        and _fits(x, (len(x), in_features))
        and _fits(bias, (out_features,))
        and _fits(other, (len(x), out_features))
    )
    library = LIBRARY.get() if fits else None
    return None if library is None else library.linear(x, weight, bias, epilogue, other)
