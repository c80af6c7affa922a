"""Linear layers of a few rows at the speed of reading their weights (``skinny_linear.c``).

A lone instructed query to a Qwen3 model computes five or six tokens of its own once its
instruction comes from the prefix cache (``prefix_cache.py``), and every batch's last layer one row
per text. With so few rows a Linear layer's time is that of reading its weights, and oneDNN read
them at under half the memory's speed on a 2-core Zen 4 VM: 12-19 GB/s in bf16 against the
kernel's 29-38, for 1 to 8 rows of the Qwen3-0.6B shape's layers; 18 against 36 GB/s in float32
at 6 rows. The kernel streams each weight once, with a software prefetch, and keeps the rows'
products in registers; ``fused_linear.py`` hands it every Linear layer of at most
:func:`max_rows` rows in its precision.

How many rows that is depends on the CPU and the model: the kernel waits on memory until its
products catch up, and oneDNN computes several times faster on AMX's tiles than on AVX-512. So it
is measured, not assumed: when a model's precision is settled at load (``precision.py``), the
kernel and oneDNN each multiply the model's own Linear layers at ascending row counts until
oneDNN is the faster (:func:`settle`, :func:`measure`, :func:`cut_off`).
``QWEMBED_SKINNY_MAX_ROWS`` pins the count instead.

Two builds, each loaded and checked by ``native.py``: bf16 where the CPU has AVX-512 with bf16 dot
products, float32 (for models kept exact) where it has AVX2 and FMA. ``QWEMBED_SKINNY_LINEAR=0``
keeps oneDNN for every size.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from . import native

log = logging.getLogger("qwembed.skinny_linear")

SOURCE = Path(__file__).with_name("skinny_linear.c")

ENV_SWITCH = "QWEMBED_SKINNY_LINEAR"

#: row counts at which the kernel and oneDNN are timed against each other, ascending. On a 2-core
#: Zen 4 VM (AVX512-BF16, no AMX) the 0.6B shape's five Linear layers × 28 ran in bf16 2.1-2.7×
#: oneDNN's speed at 1-12 rows, 1.4× at 32, 1.14× at 48, 1.06× at 64, even at 96; in float32
#: 1.4-2.1× at 1-12 rows, 1.1× at 24, 0.95× at 48 (bench/bench_skinny_linear.py,
#: docs/benchmarks.md). Where oneDNN computes on AMX, the kernel's lead ends sooner.
CALIBRATION_ROWS = (1, 8, 16, 32, 48, 64)

#: the kernel never takes more rows than the most tried
MOST_ROWS = CALIBRATION_ROWS[-1]

#: a model's Linear layers timed, in the model's order, up to this many bytes: more than a CPU's
#: caches hold, so that a large model's layers are read from memory, as in its forward pass (a
#: small model's all fit, and are read from the caches in both)
CALIBRATION_BYTES = 128 << 20

#: passes over those layers by each side at each row count, alternating; each layer counts with
#: its fastest call. Another process taking a core stretches calls by milliseconds (a whole pass
#: of MiniLM's 37 layers takes 0.5-2 ms): on a VM busy with other processes, whole passes compared
#: against each other put the kernel at 0.01× oneDNN's speed at one row, where call by call it was
#: 2-3× faster. At least MIN_ROUNDS; more while a round still lowers either side's sum by SETTLED,
#: unless the winner, by CLEAR_MARGIN or more, is the same as the round before; up to MAX_ROUNDS;
#: the whole measurement within BUDGET_S (a count it leaves unsettled ends it)
MIN_ROUNDS, MAX_ROUNDS = 2, 12
SETTLED = 0.03
CLEAR_MARGIN = 1.1
BUDGET_S = 2.0

#: the cut-off where no model has measured one (a layer called on its own): the Zen 4 figures above
DEFAULT_MAX_ROWS = {torch.bfloat16: 48, torch.float32: 16}

#: a row count to use instead of measuring one (0: the kernel takes no layer; at most MOST_ROWS)
ENV_MAX_ROWS = "QWEMBED_SKINNY_MAX_ROWS"

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
        unit=" rounding steps",
        log=log,
    )


#: each precision's build; tests check every one the machine runs
BUILDS = {
    torch.bfloat16: _build(torch.bfloat16, native.BASE_FLAGS, native.BASE_CPU_FLAGS),
    torch.float32: _build(torch.float32, FLOAT32_FLAGS, ("avx2", "fma")),
}


def measure(
    library: Library,
    weights: Sequence[torch.Tensor],
    rows_tried: Sequence[int] = CALIBRATION_ROWS,
    rounds: tuple[int, int] = (MIN_ROUNDS, MAX_ROUNDS),
    budget_s: float | None = None,
) -> dict[int, tuple[float, float]]:
    """Seconds of a pass over ``weights`` (Linear layers in the library's precision), by
    ``library`` and by oneDNN (what ``fused_linear.py`` calls otherwise), at each of ``rows_tried``
    in turn until oneDNN is the faster: rows → (kernel, oneDNN), each the sum of each layer's
    fastest call over passes that alternate between the sides, at least ``rounds[0]`` each and more
    until a round changes neither sum or leaves the same clear winner (up to ``rounds[1]``). Whole
    passes, so that each layer's
    weights come from memory, as in a forward pass, not from the cache that its call before left
    them in. A row count still unsettled when ``budget_s`` (``BUDGET_S``) runs out is left out, and
    ends it."""
    generator = torch.Generator().manual_seed(0)
    widths = sorted({weight.shape[1] for weight in weights})
    least, most = rounds
    deadline = time.perf_counter() + (BUDGET_S if budget_s is None else budget_s)

    def kernel(x: torch.Tensor, weight: torch.Tensor) -> object:
        return library.linear(x, weight)

    def onednn(x: torch.Tensor, weight: torch.Tensor) -> object:
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")

    def one_pass(multiply: Callable[[torch.Tensor, torch.Tensor], object], inputs: dict) -> list[float]:
        seconds = []
        for weight in weights:
            start = time.perf_counter()
            multiply(inputs[weight.shape[1]], weight)
            seconds.append(time.perf_counter() - start)
        return seconds

    seconds: dict[int, tuple[float, float]] = {}
    with torch.inference_mode():
        for rows in rows_tried:
            inputs = {w: torch.randn(rows, w, generator=generator).to(library.dtype) for w in widths}
            for weight in {tuple(w.shape): w for w in weights}.values():
                kernel(inputs[weight.shape[1]], weight)  # (oneDNN builds its kernel for a new shape here)
                onednn(inputs[weight.shape[1]], weight)
            fastest = {side: [math.inf] * len(weights) for side in (kernel, onednn)}
            totals = {side: math.inf for side in fastest}
            winner = None
            for round_ in range(most):
                settled = True
                for side in (kernel, onednn) if round_ % 2 == 0 else (onednn, kernel):
                    fastest[side] = list(map(min, fastest[side], one_pass(side, inputs)))
                    total = sum(fastest[side])
                    settled = settled and total > (1 - SETTLED) * totals[side]
                    totals[side] = total
                clear = max(totals.values()) >= CLEAR_MARGIN * min(totals.values())
                last_winner, winner = winner, min(totals, key=totals.__getitem__)
                if round_ + 1 >= least and (settled or (clear and winner is last_winner)):
                    break
                if time.perf_counter() > deadline:
                    return seconds  # (a busy CPU: this count is not known, nor any above it)
            seconds[rows] = (totals[kernel], totals[onednn])
            if totals[kernel] > totals[onednn]:
                break
    return seconds


def cut_off(seconds: Mapping[int, tuple[float, float]]) -> int:
    """The most rows up to which the kernel was at least as fast as oneDNN at every count
    measured (``seconds``: rows → (kernel, oneDNN)); 0 where it lost at the first."""
    most = 0
    for rows, (kernel, onednn) in sorted(seconds.items()):
        if kernel > onednn:
            break
        most = rows
    return most


#: each precision's cut-off, settled with the first model loaded in it: pinned or measured
_settled: dict[torch.dtype, int] = {}
_measuring = threading.Lock()


def max_rows(dtype: torch.dtype) -> int:
    """Rows up to which a Linear layer in ``dtype`` goes to the kernel: as settled with the first
    model in ``dtype``; before any, pinned or the default."""
    most = _settled.get(dtype)  # (asked on every Linear layer's call of a few rows)
    if most is None:
        pinned = _pinned_max_rows()
        most = DEFAULT_MAX_ROWS.get(dtype, 0) if pinned is None else pinned
    return most


def _pinned_max_rows() -> int | None:
    pinned = os.environ.get(ENV_MAX_ROWS, "").strip()
    if not pinned:
        return None
    if not (pinned.isdigit() and int(pinned) <= MOST_ROWS):
        raise ValueError(f"{ENV_MAX_ROWS}={pinned!r}: expected a row count from 0 to {MOST_ROWS}")
    return int(pinned)


def settle(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Measure where the kernel beats oneDNN on ``model``'s Linear layers in ``dtype``, once per
    precision and process (a fraction of a second; on a busy CPU up to ``BUDGET_S``, and where not
    even one row could be timed, the default stays until the next model's load); pinned, take the
    pin."""
    if dtype in _settled:
        return
    pinned = _pinned_max_rows()
    if pinned is not None:
        _settled[dtype] = pinned
        return
    build = BUILDS.get(dtype)
    library = build.get() if build is not None else None
    if library is None or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return  # (no Linear layer reaches the kernel then)
    with _measuring:
        if dtype in _settled:
            return
        weights = _layers_to_time(model, dtype)
        if not weights:
            return  # none the kernel takes: the default stands for layers called on their own
        start = time.perf_counter()
        seconds = measure(library, weights)
        if seconds:
            _settled[dtype] = cut_off(seconds)
    took = time.perf_counter() - start
    name = str(dtype).removeprefix("torch.")
    if not seconds:
        log.warning(
            "%s Linear layers: the CPU was too busy to time the skinny kernel against oneDNN in "
            "%.1f s; up to %d rows go to the kernel until a model loads on a quieter CPU (%s pins "
            "the count)",
            name,
            took,
            max_rows(dtype),
            ENV_MAX_ROWS,
        )
        return
    last_won = seconds[max(seconds)][0] <= seconds[max(seconds)][1]
    unsettled = last_won and max(seconds) < MOST_ROWS  # (the budget ran out before a loss)
    rows = _settled[dtype]
    log.info(
        "%s Linear layers %s on this CPU (its speed against oneDNN's on %d of the model's layers, "
        "measured in %.2f s: %s%s; %s pins the count)",
        name,
        f"of up to {rows} rows go to the skinny kernel"
        if rows
        else "all go to oneDNN, not the skinny kernel",
        len(weights),
        took,
        ", ".join(f"{onednn / kernel:.2f}× at {rows}" for rows, (kernel, onednn) in seconds.items()),
        "; the CPU was too busy to time more rows" if unsettled else "",
        ENV_MAX_ROWS,
    )


def _layers_to_time(model: torch.nn.Module, dtype: torch.dtype) -> list[torch.Tensor]:
    """The weights of ``model``'s Linear layers that the kernel takes, in order, up to
    ``CALIBRATION_BYTES``; not a language-model head (a reranker's), read for a few rows only."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weights: list[torch.Tensor] = []
    total = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        weight = module.weight.detach()
        if _takes(weight, dtype):
            weights.append(weight)
            total += weight.numel() * weight.element_size()
            if total >= CALIBRATION_BYTES:
                break
    return weights


def _fits(tensor: torch.Tensor | None, dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
    return tensor is None or (
        tensor.dtype == dtype
        and tuple(tensor.shape) == shape
        and tensor.device.type == "cpu"
        and tensor.is_contiguous()
        and not (torch.is_grad_enabled() and tensor.requires_grad)
    )


def _takes(weight: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the kernel reads ``weight`` as a Linear layer's in ``dtype``: in it, contiguous on the
    CPU, of widths the C code takes."""
    if weight.dim() != 2:
        return False
    out_features, in_features = weight.shape
    return (
        in_features % IN_MULTIPLE == 0
        and out_features % OUT_MULTIPLE == 0
        and _fits(weight, dtype, (out_features, in_features))
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
        _takes(weight, weight.dtype)
        and _fits(x, weight.dtype, (len(x), in_features))
        and _fits(bias, weight.dtype, (out_features,))
        and _fits(other, weight.dtype, (len(x), out_features))
    )
    library = build.get() if fits else None
    return None if library is None else library.linear(x, weight, bias, epilogue, other)
