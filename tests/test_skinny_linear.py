"""The skinny Linear kernel computes a bf16 Linear layer (and its SiLU or gating) as oneDNN does,
within one bf16 rounding step, takes Linear layers of few rows from ``fused_linear.py``, leaves
the rest to oneDNN, and changes no vector of a Qwen3 or MiniLM embedder beyond bf16's noise."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from native_fixtures import Counting, assert_a_failed_check_falls_back, fresh_state, loaded_or_reason
from qwembed.backends import fused_linear, native, skinny_linear
from qwembed.engine import Embedder

_LIBRARY, _REASON = loaded_or_reason(skinny_linear.LIBRARY)
needs_library = pytest.mark.skipif(_LIBRARY is None, reason=f"skinny Linear kernel unavailable: {_REASON}")
fresh_library_state = fresh_state(skinny_linear.LIBRARY)


def _layer(in_features: int, out_features: int, bias: bool, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features, bias=bias).to(torch.bfloat16).requires_grad_(False)


def _within_one_rounding_step(got: torch.Tensor, exact: torch.Tensor) -> bool:
    """bf16 ``got`` within one bf16 step of float64 ``exact`` (of a sixteenth of the row's RMS
    where the exact value is smaller: float32 sums that cancel keep their absolute error)."""
    scale = exact.square().mean(-1, keepdim=True).sqrt() / 16
    magnitude = torch.maximum(exact.abs(), scale).clamp_min(2.0**-120)
    steps = torch.ldexp(torch.ones_like(magnitude), torch.frexp(magnitude)[1] - 8)
    return bool(((got.double() - exact).abs() <= steps).all())


def test_where_the_cpu_has_the_instructions_and_a_compiler_the_kernel_serves(caplog):
    if skinny_linear.LIBRARY.unavailable_reason() is not None or native.compiler() is None:
        pytest.skip(f"no AVX512-BF16 CPU with a C compiler: {skinny_linear.LIBRARY.unavailable_reason()}")
    with caplog.at_level(logging.INFO, logger="qwembed.skinny_linear"):
        assert skinny_linear.LIBRARY.get() is not None, caplog.text
    assert "skinny Linear kernel skinny_linear-" in caplog.text


@needs_library
@pytest.mark.parametrize("rows", [1, 2, 5, 6, 7, 12, 13, 32])
@pytest.mark.parametrize("epilogue", ["none", "silu", "times"])
@pytest.mark.parametrize("bias", [False, True])
def test_the_kernel_computes_the_layer_within_a_rounding_step(rows, epilogue, bias):
    layer = _layer(1024, 96, bias, seed=rows)
    generator = torch.Generator().manual_seed(rows + 100)
    x = torch.randn(rows, 1024, generator=generator).bfloat16()
    other = torch.randn(rows, 96, generator=generator).bfloat16()
    exact = x.double() @ layer.weight.double().T
    if bias:
        exact += layer.bias.double()
    if epilogue == "silu":
        exact = torch.nn.functional.silu(exact)
    elif epilogue == "times":
        exact *= other.double()
    got = _LIBRARY.linear(x, layer.weight, layer.bias, epilogue, other if epilogue == "times" else None)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 96)
    assert _within_one_rounding_step(got, exact)


@needs_library
def test_few_rows_go_to_the_kernel_and_many_to_onednn_with_the_same_results():
    counting = Counting(_LIBRARY, "linear")
    skinny_linear.LIBRARY.set(counting)
    gate, up = _layer(256, 128, False, seed=1), _layer(256, 128, False, seed=2)
    generator = torch.Generator().manual_seed(3)
    for rows, expected_calls in ((3, 3), (skinny_linear.max_rows(), 3), (skinny_linear.max_rows() + 1, 0)):
        counting.calls.clear()
        x = torch.randn(rows, 256, generator=generator)  # float32: the layers cast it, as autocast would
        with torch.inference_mode():
            plain = fused_linear.linear(x, up.weight)
            activated = fused_linear.linear_activation(x, gate, "silu")
            product = fused_linear.linear_times(x, up, activated)
        assert counting.count("linear") == expected_calls
        skinny_linear.LIBRARY.set(None)
        with torch.inference_mode():
            references = (
                fused_linear.linear(x, up.weight),
                fused_linear.linear_activation(x, gate, "silu"),
                fused_linear.linear_times(x, up, activated),
            )
        skinny_linear.LIBRARY.set(counting)
        for got, reference in zip((plain, activated, product), references, strict=True):
            assert got.dtype == reference.dtype == torch.bfloat16
            torch.testing.assert_close(got.float(), reference.float(), rtol=2**-7, atol=2**-7)


@needs_library
def test_threads_share_the_weights_rows_without_changing_a_bit():
    layer = _layer(2048, 1024, True, seed=4)
    x = torch.randn(9, 2048, generator=torch.Generator().manual_seed(5)).bfloat16()
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append(_LIBRARY.linear(x, layer.weight, layer.bias))
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
        "float32 weights (an exact model)",
        "input features not a multiple of 32",
        "output features not a multiple of 4",
        "more rows than the kernel takes",
        "no rows",
        "a float32 bias",
    ],
)
def test_what_it_does_not_take_goes_to_onednn(case):
    skinny_linear.LIBRARY.set(_Refusing())  # on any CPU: the dispatch is what is tested
    in_features = 48 if case.startswith("input") else 64
    out_features = 6 if case.startswith("output") else 16
    rows = {"more rows than the kernel takes": skinny_linear.max_rows() + 1, "no rows": 0}.get(case, 3)
    layer = _layer(in_features, out_features, bias=case == "a float32 bias", seed=6)
    if case.startswith("float32 weights"):
        layer = layer.float()
    if case == "a float32 bias":
        layer.bias = torch.nn.Parameter(layer.bias.float(), requires_grad=False)
    x = torch.randn(rows, in_features)
    with torch.inference_mode():
        out = fused_linear.linear(x, layer.weight, layer.bias)
    assert out.shape == (rows, out_features)


@needs_library
def test_the_kernel_refuses_widths_it_does_not_take():
    with pytest.raises(ValueError, match="multiples of 32"):
        _LIBRARY.linear(torch.zeros(2, 48, dtype=torch.bfloat16), torch.zeros(16, 48, dtype=torch.bfloat16))


def test_the_switch_keeps_onednn_and_says_so(monkeypatch, caplog):
    monkeypatch.setenv(skinny_linear.ENV_SWITCH, "0")
    with caplog.at_level(logging.INFO, logger="qwembed.skinny_linear"):
        assert skinny_linear.LIBRARY.get() is None
    assert f"{skinny_linear.ENV_SWITCH}=0" in caplog.text
    layer = _layer(64, 16, False, seed=7)
    with torch.inference_mode():
        assert skinny_linear.linear(torch.randn(2, 64).bfloat16(), layer.weight) is None


@needs_library
def test_a_failed_check_keeps_onednn_and_says_so(monkeypatch, caplog):
    assert_a_failed_check_falls_back(skinny_linear.LIBRARY, "qwembed.skinny_linear", monkeypatch, caplog)


@needs_library
def test_the_check_catches_a_wrong_epilogue():
    class WrongSilu:
        def linear(self, x, weight, bias=None, epilogue="none", other=None):
            return _LIBRARY.linear(x, weight, bias, "none" if epilogue == "silu" else epilogue, other)

    assert skinny_linear.check(WrongSilu()) > skinny_linear.CHECK_TOLERANCE
    assert skinny_linear.check(_LIBRARY) <= skinny_linear.CHECK_TOLERANCE


@needs_library
def test_a_lone_qwen3_query_runs_through_the_kernel_with_the_same_vector(qwen3_128_dir):
    embedder = Embedder.load(str(qwen3_128_dir), device="cpu", dtype="bfloat16")
    texts = ["x", "如何申请信用卡的分期付款？", "how do I repay my card " * 3]
    counting = Counting(_LIBRARY, "linear")
    skinny_linear.LIBRARY.set(counting)
    lone = np.vstack([embedder.embed([text], input_type="query") for text in texts])
    # every Linear layer of each lone query: the 2 layers' QKV, output, gate, up and down
    assert counting.count("linear") >= 5 * 2 * len(texts)
    skinny_linear.LIBRARY.set(None)
    reference = np.vstack([embedder.embed([text], input_type="query") for text in texts])
    assert np.min(np.sum(lone * reference, axis=1)) > 0.9999


@needs_library
def test_minilm_embeds_short_texts_the_same_through_the_kernel(minilm_dir):
    embedder = Embedder.load(str(minilm_dir), device="cpu", dtype="bfloat16")
    texts = ["hello", "a short question about repaying a credit card"]
    counting = Counting(_LIBRARY, "linear")
    skinny_linear.LIBRARY.set(counting)
    through_kernel = embedder.embed(texts)
    assert counting.count("linear") > 0  # the Linear layers with a bias and no GELU
    skinny_linear.LIBRARY.set(None)
    assert np.min(np.sum(through_kernel * embedder.embed(texts), axis=1)) > 0.9999
