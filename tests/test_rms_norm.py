"""Qwen3's fused RMSNorm and q/k norm + RoPE kernels compute the eager steps' arithmetic, rounded
to bf16 once, write only where they are told, serve the packed Qwen3 forward, and stay out of the
way wherever they do not apply."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm, Qwen3RotaryEmbedding

from native_fixtures import Counting, assert_a_failed_check_falls_back, fresh_state, loaded_or_reason
from qwembed.backends import native, qwen3_pointwise, residual_norm, rms_norm
from qwembed.engine import Embedder

_LIBRARY, _REASON = loaded_or_reason(rms_norm.LIBRARY)
needs_library = pytest.mark.skipif(_LIBRARY is None, reason=f"fused RMSNorm kernels unavailable: {_REASON}")
fresh_library_state = fresh_state(rms_norm.LIBRARY)


def _norm(width: int, seed: int = 0) -> Qwen3RMSNorm:
    norm = Qwen3RMSNorm(width, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(width, generator=torch.Generator().manual_seed(seed)) * 2)
    return norm


def _tables(tokens: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3's rotary tables for two packed sequences (positions restart at the second)."""
    config = Qwen3Config(head_dim=width, hidden_size=64, num_attention_heads=4, rope_theta=1_000_000.0)
    first = tokens // 2
    positions = torch.cat((torch.arange(first), torch.arange(tokens - first)))
    cos, sin = Qwen3RotaryEmbedding(config)(torch.zeros(1, 1), positions[None])
    return cos[0], sin[0]


def _eager_qk(qkv: torch.Tensor, q_heads: int, kv_heads: int, norms, cos, sin) -> torch.Tensor:
    """The eager steps' result with the kernels switched off, rounded to bf16 at the end."""
    expected = qkv.float()
    rms_norm.LIBRARY.set(None)
    try:
        qwen3_pointwise.rotate_normed_(expected[:, :q_heads], norms[0], cos, sin)
        qwen3_pointwise.rotate_normed_(expected[:, q_heads : q_heads + kv_heads], norms[1], cos, sin)
    finally:
        rms_norm.LIBRARY.reset()
    return expected.bfloat16()


def _differ_by_at_most_one_rounding_step(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """bf16 results of float32 values that differ in their last bits: equal or adjacent bf16s."""
    steps = (got.view(torch.int16).int() - expected.view(torch.int16).int()).abs()
    return bool((steps <= 1).all())


def test_where_the_cpu_has_the_instructions_and_a_compiler_the_kernels_serve(caplog):
    if rms_norm.LIBRARY.unavailable_reason() is not None or native.compiler() is None:
        pytest.skip(f"no AVX512-BF16 CPU with a C compiler: {rms_norm.LIBRARY.unavailable_reason()}")
    with caplog.at_level(logging.INFO, logger="qwembed.rms_norm"):
        assert rms_norm.LIBRARY.get() is not None, caplog.text
    assert "fused RMSNorm kernels rms_norm-" in caplog.text


@needs_library
@pytest.mark.parametrize("width", [1024, 2560, 64])
def test_rms_norm_equals_the_eager_step_and_leaves_the_residual_stream_alone(width):
    hidden = torch.randn(53, width, generator=torch.Generator().manual_seed(1)) * 3
    before = hidden.clone()
    norm = _norm(width)
    with torch.inference_mode():
        got = qwen3_pointwise.rms_norm(hidden, norm, torch.bfloat16)
        rows = hidden.double()
        exact = rows * (rows.square().mean(-1, keepdim=True) + 1e-6).rsqrt() * norm.weight
    assert got.dtype == torch.bfloat16 and got.shape == hidden.shape
    assert _differ_by_at_most_one_rounding_step(got, exact.float().bfloat16())
    assert torch.equal(hidden, before)


@needs_library
@pytest.mark.parametrize(("width", "q_heads", "kv_heads"), [(128, 16, 8), (128, 32, 8), (64, 4, 2)])
def test_rotate_normed_equals_the_eager_step_in_its_heads_only(width, q_heads, kv_heads):
    tokens = 45
    generator = torch.Generator().manual_seed(2)
    qkv = (torch.randn(tokens, q_heads + 2 * kv_heads, width, generator=generator) * 2).bfloat16()
    before = qkv.clone()
    cos, sin = _tables(tokens, width)
    norms = (_norm(width, 3), _norm(width, 4))
    expected = _eager_qk(qkv, q_heads, kv_heads, norms, cos, sin)
    counting = Counting(_LIBRARY, "rotate_normed_")
    rms_norm.LIBRARY.set(counting)
    with torch.inference_mode():
        qwen3_pointwise.rotate_normed_(qkv[:, :q_heads], norms[0], cos, sin)
        qwen3_pointwise.rotate_normed_(qkv[:, q_heads : q_heads + kv_heads], norms[1], cos, sin)
    assert counting.count("rotate_normed_") == 2
    rotated = slice(0, q_heads + kv_heads)
    assert _differ_by_at_most_one_rounding_step(qkv[:, rotated], expected[:, rotated])
    assert torch.equal(qkv[:, q_heads + kv_heads :], before[:, q_heads + kv_heads :])  # values untouched


@needs_library
def test_threads_share_the_tokens_without_changing_a_bit():
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(301, 1024, generator=generator)
    qkv = torch.randn(301, 32, 128, generator=generator).bfloat16()
    cos, sin = _tables(301, 128)
    norm, head_norm = _norm(1024), _norm(128)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            heads = qkv.clone()
            with torch.inference_mode():
                qwen3_pointwise.rotate_normed_(heads[:, :16], head_norm, cos, sin)
                results.append((qwen3_pointwise.rms_norm(hidden, norm, torch.bfloat16), heads))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


class _Refusing:
    """Stands in for the library: any call is a failure of the test."""

    def rms_norm(self, *args):
        raise AssertionError("the kernel was handed what it does not take")

    rotate_normed_ = rms_norm


@pytest.mark.parametrize(
    "case",
    [
        "float32 output (an exact model)",
        "heads of 16 (tiny test models)",
        "float32 heads (an exact model)",
        "a width not a multiple of 32",
        "a GPU-style bf16 residual stream",
    ],
)
def test_what_it_does_not_take_goes_the_eager_way(case):
    rms_norm.LIBRARY.set(_Refusing())  # on any CPU: the dispatch is what is tested
    generator = torch.Generator().manual_seed(6)
    hidden_width = 48 if case.startswith("a width") else 64
    hidden = torch.randn(9, hidden_width, generator=generator)
    if case.startswith("a GPU-style"):
        hidden = hidden.bfloat16()
    width = 16 if case.startswith("heads of 16") else 128
    qkv = torch.randn(9, 4, width, generator=generator)
    if not case.startswith("float32 heads"):
        qkv = qkv.bfloat16()
    cos, sin = _tables(9, width)
    dtype = torch.float32 if case.startswith("float32 output") else torch.bfloat16
    with torch.inference_mode():
        if case.startswith(("float32 output", "a width", "a GPU-style")):
            out = qwen3_pointwise.rms_norm(hidden, _norm(hidden_width), dtype)
            assert out.dtype == dtype
        else:
            qwen3_pointwise.rotate_normed_(qkv[:, :2], _norm(width), cos, sin)


def test_the_switch_keeps_pytorchs_operators_and_says_so(monkeypatch, caplog):
    monkeypatch.setenv(residual_norm.ENV_SWITCH, "0")
    with caplog.at_level(logging.INFO, logger="qwembed.rms_norm"):
        assert rms_norm.LIBRARY.get() is None
    assert f"{residual_norm.ENV_SWITCH}=0" in caplog.text
    hidden = torch.randn(5, 64)
    with torch.inference_mode():
        assert rms_norm.rms_norm(hidden, _norm(64), torch.bfloat16) is None


@needs_library
def test_a_failed_check_keeps_pytorchs_operators_and_says_so(monkeypatch, caplog):
    assert_a_failed_check_falls_back(rms_norm.LIBRARY, "qwembed.rms_norm", monkeypatch, caplog)


@needs_library
def test_the_check_catches_a_wrong_rotation_and_a_write_outside_the_heads():
    class WrongSign:
        def rms_norm(self, *args):
            return _LIBRARY.rms_norm(*args)

        def rotate_normed_(self, heads, weight, eps, cos, sin):
            _LIBRARY.rotate_normed_(heads, weight, eps, cos, -sin)  # rotated the other way

    class Spilling(WrongSign):
        def rotate_normed_(self, heads, weight, eps, cos, sin):
            _LIBRARY.rotate_normed_(heads, weight, eps, cos, sin)
            full = heads.as_strided((heads.shape[0], heads.shape[1] + 1, heads.shape[2]), heads.stride())
            full[:, -1].zero_()  # the head after the last one given

    assert rms_norm.check(WrongSign()) > rms_norm.CHECK_TOLERANCE
    assert rms_norm.check(Spilling()) == float("inf")
    assert rms_norm.check(_LIBRARY) <= rms_norm.CHECK_TOLERANCE


@needs_library
def test_qwen3_embeds_the_same_with_the_kernels_as_with_pytorchs_operators(qwen3_128_dir):
    embedder = Embedder.load(str(qwen3_128_dir), device="cpu", dtype="bfloat16")
    texts = ["x", "如何申请信用卡的分期付款？", "a much longer text about loans and repayments " * 40]
    texts += [f"question {i}: " + "how do I repay my card " * (i % 7) for i in range(12)]
    counting = Counting(_LIBRARY, "rms_norm", "rotate_normed_")
    rms_norm.LIBRARY.set(counting)
    fused = embedder.embed(texts)
    # per layer and batch: two norms before its Linear layers, query and key heads rotated
    batches, left = divmod(len(counting.calls), 4 * 2)  # the tiny model's 2 layers
    assert batches >= 1 and left == 0 and counting.count("rms_norm") == counting.count("rotate_normed_")
    rms_norm.LIBRARY.set(None)
    eager = embedder.embed(texts)
    assert np.min(np.sum(fused * eager, axis=1)) > 0.9999
