"""The skinny Linear kernel computes a Linear layer (and its SiLU or gating) as oneDNN does, in
bf16 within one rounding step and in float32 within float32's noise, takes Linear layers of few
rows from ``fused_linear.py``, leaves the rest to oneDNN, and changes no vector of a Qwen3 or
MiniLM embedder beyond the precision's noise."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from native_fixtures import Counting, assert_a_failed_check_falls_back, fresh_state, loaded_or_reason
from qwembed.backends import fused_linear, native, skinny_linear
from qwembed.engine import Embedder

BF16, FLOAT32 = torch.bfloat16, torch.float32
_LOADED = {dtype: loaded_or_reason(build) for dtype, build in skinny_linear.BUILDS.items()}
_LIBRARY, _REASON = _LOADED[BF16]
needs_library = pytest.mark.skipif(
    _LIBRARY is None, reason=f"bf16 skinny Linear kernel unavailable: {_REASON}"
)
fresh_library_state = fresh_state(skinny_linear.BUILDS[BF16])
fresh_float32_state = fresh_state(skinny_linear.BUILDS[FLOAT32])

#: the cut-offs the routing tests take as measured: what a 2-core Zen 4 VM measures, pinned, so
#: that which layers the kernel takes does not depend on this machine's speeds
PINNED_MAX_ROWS = {BF16: 48, FLOAT32: 16}


@pytest.fixture(autouse=True)
def pinned_max_rows(monkeypatch):
    monkeypatch.delenv(skinny_linear.ENV_MAX_ROWS, raising=False)  # (conftest pins one for the suite)
    monkeypatch.setattr(skinny_linear, "_settled", dict(PINNED_MAX_ROWS))


def _each_build(test):
    """Runs ``test(library, dtype)`` for each build, skipping (with the reason) one that cannot serve here."""
    builds = [
        pytest.param(
            dtype,
            marks=pytest.mark.skipif(
                library is None, reason=f"{dtype} skinny Linear kernel unavailable: {why}"
            ),
        )
        for dtype, (library, why) in _LOADED.items()
    ]
    return pytest.mark.parametrize("dtype", builds, ids=str)(test)


def _layer(in_features: int, out_features: int, bias: bool, seed: int, dtype=BF16) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features, bias=bias).to(dtype).requires_grad_(False)


def _within_tolerance(got: torch.Tensor, exact: torch.Tensor, dtype: torch.dtype) -> bool:
    """``got`` within the load-time check's tolerance of float64 ``exact``, in rounding steps of
    ``dtype`` (of a sixteenth of the row's RMS where the exact value is smaller: float32 sums that
    cancel keep their absolute error)."""
    steps = skinny_linear.rounding_steps(exact, dtype)
    return bool(((got.double() - exact).abs() <= skinny_linear.CHECK_TOLERANCE[dtype] * steps).all())


@pytest.mark.parametrize("dtype", [BF16, FLOAT32], ids=str)
def test_where_the_cpu_has_the_instructions_and_a_compiler_the_kernel_serves(dtype, caplog):
    build = skinny_linear.BUILDS[dtype]
    if build.unavailable_reason() is not None or native.compiler() is None:
        pytest.skip(f"no CPU with the instructions and a C compiler: {build.unavailable_reason()}")
    with caplog.at_level(logging.INFO, logger="qwembed.skinny_linear"):
        assert build.get() is not None, caplog.text
    assert "skinny Linear kernel (" in caplog.text and "serves" in caplog.text


@_each_build
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 6, 7, 12, 13, 32])
@pytest.mark.parametrize("epilogue", ["none", "silu", "times"])
@pytest.mark.parametrize("bias", [False, True])
def test_the_kernel_computes_the_layer_within_its_precision(dtype, rows, epilogue, bias):
    library = _LOADED[dtype][0]
    layer = _layer(1024, 96, bias, seed=rows, dtype=dtype)
    generator = torch.Generator().manual_seed(rows + 100)
    x = torch.randn(rows, 1024, generator=generator).to(dtype)
    other = torch.randn(rows, 96, generator=generator).to(dtype)
    exact = x.double() @ layer.weight.double().T
    if bias:
        exact += layer.bias.double()
    if epilogue == "silu":
        exact = torch.nn.functional.silu(exact)
    elif epilogue == "times":
        exact *= other.double()
    got = library.linear(x, layer.weight, layer.bias, epilogue, other if epilogue == "times" else None)
    assert got.dtype == dtype and got.shape == (rows, 96)
    assert _within_tolerance(got, exact, dtype)


@_each_build
def test_few_rows_go_to_the_kernel_and_many_to_onednn_with_the_same_results(dtype):
    build, most = skinny_linear.BUILDS[dtype], skinny_linear.max_rows(dtype)
    counting = Counting(_LOADED[dtype][0], "linear")
    build.set(counting)
    gate, up = _layer(256, 128, False, seed=1, dtype=dtype), _layer(256, 128, False, seed=2, dtype=dtype)
    generator = torch.Generator().manual_seed(3)
    for rows, expected_calls in ((3, 3), (most, 3), (most + 1, 0)):
        counting.calls.clear()
        x = torch.randn(rows, 256, generator=generator)  # float32: the layers cast it, as autocast would
        with torch.inference_mode():
            plain = fused_linear.linear(x, up.weight)
            activated = fused_linear.linear_activation(x, gate, "silu")
            product = fused_linear.linear_times(x, up, activated)
        assert counting.count("linear") == expected_calls
        build.set(None)
        with torch.inference_mode():
            references = (
                fused_linear.linear(x, up.weight),
                fused_linear.linear_activation(x, gate, "silu"),
                fused_linear.linear_times(x, up, activated),
            )
        build.set(counting)
        tolerance = 2**-7 if dtype == BF16 else 1e-5
        for got, reference in zip((plain, activated, product), references, strict=True):
            assert got.dtype == reference.dtype == dtype
            torch.testing.assert_close(got.float(), reference.float(), rtol=tolerance, atol=tolerance)


@_each_build
def test_threads_share_the_weights_rows_without_changing_a_bit(dtype):
    library = _LOADED[dtype][0]
    layer = _layer(2048, 1024, True, seed=4, dtype=dtype)
    x = torch.randn(9, 2048, generator=torch.Generator().manual_seed(5)).to(dtype)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append(library.linear(x, layer.weight, layer.bias))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


class _Refusing:
    """Stands in for the library: any call is a failure of the test."""

    def linear(self, *args):
        raise AssertionError("the kernel was handed what it does not take")


@pytest.mark.parametrize(
    "case",
    [
        "float16 weights",
        "input features not a multiple of 32",
        "output features not a multiple of 4",
        "more rows than the kernel takes",
        "more rows than the float32 kernel takes",
        "no rows",
        "a float32 bias on bf16 weights",
    ],
)
def test_what_it_does_not_take_goes_to_onednn(case):
    for build in skinny_linear.BUILDS.values():
        build.set(_Refusing())  # on any CPU: the dispatch is what is tested
    dtype = FLOAT32 if "float32 kernel" in case else BF16
    in_features = 48 if case.startswith("input") else 64
    out_features = 6 if case.startswith("output") else 16
    rows = {"no rows": 0}.get(case, skinny_linear.max_rows(dtype) + 1 if case.startswith("more") else 3)
    layer = _layer(in_features, out_features, bias=case.startswith("a float32 bias"), seed=6, dtype=dtype)
    if case.startswith("float16"):
        layer = layer.half()
    if case.startswith("a float32 bias"):
        layer.bias = torch.nn.Parameter(layer.bias.float(), requires_grad=False)
    x = torch.randn(rows, in_features).to(layer.weight.dtype if case.startswith("float16") else FLOAT32)
    with torch.inference_mode():
        out = fused_linear.linear(x, layer.weight, layer.bias)
    assert out.shape == (rows, out_features)


@needs_library
def test_the_kernel_refuses_widths_it_does_not_take():
    with pytest.raises(ValueError, match="multiples of 32"):
        _LIBRARY.linear(torch.zeros(2, 48, dtype=torch.bfloat16), torch.zeros(16, 48, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [BF16, FLOAT32], ids=str)
def test_the_switch_keeps_onednn_and_says_so(dtype, monkeypatch, caplog):
    monkeypatch.setenv(skinny_linear.ENV_SWITCH, "0")
    with caplog.at_level(logging.INFO, logger="qwembed.skinny_linear"):
        assert skinny_linear.BUILDS[dtype].get() is None
    assert f"{skinny_linear.ENV_SWITCH}=0" in caplog.text
    layer = _layer(64, 16, False, seed=7, dtype=dtype)
    with torch.inference_mode():
        assert skinny_linear.linear(torch.randn(2, 64).to(dtype), layer.weight) is None


@_each_build
def test_a_failed_check_keeps_onednn_and_says_so(dtype, monkeypatch, caplog):
    build = skinny_linear.BUILDS[dtype]
    assert_a_failed_check_falls_back(build, "qwembed.skinny_linear", monkeypatch, caplog)


@_each_build
def test_the_check_catches_a_wrong_epilogue(dtype):
    library = _LOADED[dtype][0]

    class WrongSilu:
        dtype = library.dtype

        def linear(self, x, weight, bias=None, epilogue="none", other=None):
            return library.linear(x, weight, bias, "none" if epilogue == "silu" else epilogue, other)

    assert skinny_linear.check(WrongSilu()) > skinny_linear.CHECK_TOLERANCE[dtype]
    assert skinny_linear.check(library) <= skinny_linear.CHECK_TOLERANCE[dtype]


@_each_build
def test_a_lone_qwen3_query_runs_through_the_kernel_with_the_same_vector(dtype, qwen3_128_dir):
    embedder = Embedder.load(str(qwen3_128_dir), device="cpu", dtype=str(dtype).removeprefix("torch."))
    embedder.embed(["a first query computes the instruction"], input_type="query")  # (kept in the cache)
    texts = ["x", "如何申请信用卡的分期付款？", "how do I repay my card"]
    build = skinny_linear.BUILDS[dtype]
    counting = Counting(_LOADED[dtype][0], "linear")
    build.set(counting)
    lone = np.vstack([embedder.embed([text], input_type="query") for text in texts])
    # every Linear layer of each lone query: the 2 layers' QKV, output, gate, up and down
    assert counting.count("linear") == 5 * 2 * len(texts)
    build.set(None)
    reference = np.vstack([embedder.embed([text], input_type="query") for text in texts])
    assert np.min(np.sum(lone * reference, axis=1)) > (0.9999 if dtype == BF16 else 0.999999)


@needs_library
def test_minilm_embeds_short_texts_the_same_through_the_kernel(minilm_dir):
    embedder = Embedder.load(str(minilm_dir), device="cpu", dtype="bfloat16")
    texts = ["hello", "a short question about repaying a credit card"]
    counting = Counting(_LIBRARY, "linear")
    skinny_linear.BUILDS[BF16].set(counting)
    through_kernel = embedder.embed(texts)
    assert counting.count("linear") > 0  # the Linear layers with a bias and no GELU
    skinny_linear.BUILDS[BF16].set(None)
    assert np.min(np.sum(through_kernel * embedder.embed(texts), axis=1)) > 0.9999


@pytest.mark.parametrize(
    ("kernel_wins_up_to", "expected"),
    [(64, 64), (40, 32), (1, 1), (0, 0)],
)
def test_the_cut_off_is_the_last_row_count_the_kernel_won(kernel_wins_up_to, expected):
    seconds = {
        rows: (1.0, 2.0) if rows <= kernel_wins_up_to else (2.0, 1.0)
        for rows in skinny_linear.CALIBRATION_ROWS
    }
    assert skinny_linear.cut_off(seconds) == expected
    seconds[8] = (3.0, 1.0)  # a loss below a win ends it there
    assert skinny_linear.cut_off(seconds) == min(expected, 1)


class _SlowAbove:
    """A stand-in kernel that answers at once up to ``rows`` rows and takes 5 ms a layer above."""

    def __init__(self, rows: int, dtype: torch.dtype):
        self.rows, self.dtype, self.calls = rows, dtype, []

    def linear(self, x, weight, *args):
        self.calls.append(len(x))
        if len(x) > self.rows:
            time.sleep(0.005)
        return x


def test_the_measurement_times_both_sides_in_turn_until_onednn_is_faster():
    if not fused_linear.onednn_available():
        pytest.skip("this torch has no oneDNN Linear to measure against")
    kernel = _SlowAbove(16, FLOAT32)
    weights = [torch.randn(64, 32), torch.randn(32, 64), torch.randn(64, 32)]
    seconds = skinny_linear.measure(kernel, weights, rounds=(3, 3))
    assert list(seconds) == [1, 8, 16, 32]  # stopped at the first loss
    assert skinny_linear.cut_off(seconds) == 16
    # each row count: a call for each of the 2 shapes to warm up, then 3 passes over the 3 layers
    assert kernel.calls.count(8) == 2 + 3 * 3


class _Hiccups:
    """A stand-in kernel twice as fast as its ``slow`` side, but whose every 4th call a neighbour's
    time slice stretches by 20 ms (each in another pass, at another layer)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype, self.calls = dtype, 0

    def linear(self, x, weight, *args):
        self.calls += 1
        time.sleep(0.02 if self.calls % 4 == 0 else 0.001)
        return x


def test_a_neighbours_time_slices_do_not_decide_the_measurement(monkeypatch):
    """On a VM busy with other processes whole passes put the kernel at 0.01× oneDNN's speed, where
    call by call it was 2× faster: each layer counts with its fastest call."""
    if not fused_linear.onednn_available():
        pytest.skip("this torch has no oneDNN Linear to measure against")

    def steady(*args):
        time.sleep(0.002)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", steady)
    weights = [torch.randn(64, 32) for _ in range(3)]
    seconds = skinny_linear.measure(_Hiccups(FLOAT32), weights, rows_tried=(1, 8), rounds=(3, 3))
    assert skinny_linear.cut_off(seconds) == 8


class _Clock:
    """The measurement's clock, moved only by the stand-ins below: what they take is exact."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Side:
    """A stand-in for one side (kernel or oneDNN) whose calls take ``seconds(pass number)``, its
    first call (the warm-up) as pass 0."""

    def __init__(self, clock: _Clock, layers: int, seconds, dtype: torch.dtype = FLOAT32):
        self.clock, self.layers, self.seconds, self.dtype, self.calls = clock, layers, seconds, dtype, 0

    def linear(self, x, weight, *args):
        self.clock.now += self.seconds(max(0, self.calls - 1) // self.layers)
        self.calls += 1
        return x


def test_rounds_go_on_until_the_sums_settle_or_a_clear_winner_holds(monkeypatch, caplog):
    if not fused_linear.onednn_available():
        pytest.skip("this torch has no oneDNN Linear to measure against")
    clock = _Clock()
    monkeypatch.setattr(skinny_linear, "time", clock)
    weights = [torch.randn(64, 32) for _ in range(3)]

    def measure(kernel_seconds, onednn_seconds) -> tuple[int, int]:
        """Calls of each side in a measurement at one row count, sides timed as given."""
        kernel, onednn = _Side(clock, 3, kernel_seconds), _Side(clock, 3, onednn_seconds)
        monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda x, w, *a: onednn.linear(x, w))
        skinny_linear.measure(kernel, weights, rows_tried=(8,), rounds=(2, 12), budget_s=60.0)
        return kernel.calls, onednn.calls

    # (each side: one warm-up call for the one shape, then 3 layers a round)
    assert measure(lambda n: 0.005, lambda n: 0.002) == (1 + 2 * 3,) * 2  # the same clear winner twice
    assert measure(lambda n: 0.002, lambda n: 0.002) == (1 + 2 * 3,) * 2  # settled: no sum moved
    # neither: equal sides, each round 15 % faster: rounds up to the most
    assert measure(lambda n: 0.002 * 0.85**n, lambda n: 0.002 * 0.85**n) == (1 + 12 * 3,) * 2
    # a CPU too busy to settle even one row in the budget: nothing measured, the default stays
    monkeypatch.setattr(skinny_linear, "_settled", {})
    monkeypatch.setattr(skinny_linear, "BUDGET_S", 0.0)
    monkeypatch.setattr(skinny_linear, "_takes", lambda weight, dtype: True)
    monkeypatch.setattr(skinny_linear.BUILDS[FLOAT32], "get", lambda: _Side(clock, 3, lambda n: 0.002))
    model = torch.nn.Sequential(*(torch.nn.Linear(32, 64) for _ in range(3)))
    with caplog.at_level(logging.WARNING, logger="qwembed.skinny_linear"):
        skinny_linear.settle(model, FLOAT32)
    assert skinny_linear._settled == {} and "too busy" in caplog.text


def test_the_pin_replaces_the_measurement(monkeypatch, qwen3_128_dir):
    monkeypatch.setattr(skinny_linear, "_settled", {})
    monkeypatch.setattr(skinny_linear, "measure", lambda *a, **k: pytest.fail("measured"))
    monkeypatch.setenv(skinny_linear.ENV_MAX_ROWS, "5")
    Embedder.load(str(qwen3_128_dir), device="cpu", dtype="float32")
    assert skinny_linear.max_rows(BF16) == skinny_linear.max_rows(FLOAT32) == 5
    for bad in ("many", str(skinny_linear.MOST_ROWS + 1)):
        monkeypatch.setenv(skinny_linear.ENV_MAX_ROWS, bad)
        with pytest.raises(ValueError, match=skinny_linear.ENV_MAX_ROWS):
            skinny_linear.max_rows(BF16)


def test_without_a_measurement_the_default_stands(monkeypatch):
    monkeypatch.setattr(skinny_linear, "_settled", {})
    assert skinny_linear.max_rows(BF16) == skinny_linear.DEFAULT_MAX_ROWS[BF16]
    assert skinny_linear.max_rows(torch.float16) == 0
    # a model with no layer the kernel takes (widths not multiples of 32) measures nothing
    skinny_linear.settle(torch.nn.Sequential(_layer(48, 16, False, seed=9)), BF16)
    assert skinny_linear._settled == {}


@_each_build
def test_a_model_measures_the_cut_off_on_its_layers_at_load_and_says_so(
    dtype, qwen3_128_dir, monkeypatch, caplog
):
    monkeypatch.setattr(skinny_linear, "_settled", {})
    timed: list[list[torch.Tensor]] = []
    measure = skinny_linear.measure
    monkeypatch.setattr(
        skinny_linear, "measure", lambda library, weights: timed.append(weights) or measure(library, weights)
    )
    name = str(dtype).removeprefix("torch.")
    with caplog.at_level(logging.INFO, logger="qwembed.skinny_linear"):
        embedder = Embedder.load(str(qwen3_128_dir), device="cpu", dtype=name)
    assert skinny_linear._settled[dtype] in (0, *skinny_linear.CALIBRATION_ROWS)
    assert f"{name} Linear layers of up to {skinny_linear._settled[dtype]} rows" in caplog.text
    model_layers = [m.weight for m in embedder.encoder.model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(timed) == 1 and [w.data_ptr() for w in timed[0]] == [w.data_ptr() for w in model_layers]
    Embedder.load(str(qwen3_128_dir), device="cpu", dtype=name)
    assert len(timed) == 1  # once per precision and process
