"""Our CPU attention kernel, in each build this machine runs (AMX, AVX512-BF16), equals PyTorch's
attention, serves only what it handles, and where it cannot serve (neither instruction set, no
compiler, a failed build or check, the switch) PyTorch's kernel stays and the log says why."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from native_fixtures import fresh_state, loaded_or_reason
from qwembed.backends import cpu_attention, native
from qwembed.backends.packing import PackedBatch, grouped_attention
from qwembed.engine import Embedder

_KERNEL, _REASON = loaded_or_reason(cpu_attention.KERNEL)
needs_kernel = pytest.mark.skipif(_KERNEL is None, reason=f"CPU attention kernel unavailable: {_REASON}")
fresh_kernel_state = fresh_state(cpu_attention.KERNEL)


def _variants():
    """Each build of the kernel, loaded where this machine runs it, else skipped with the reason."""
    params = []
    for name, loader in cpu_attention.VARIANTS.items():
        kernel, reason = loaded_or_reason(loader)
        mark = pytest.mark.skipif(kernel is None, reason=f"{name} attention unavailable: {reason}")
        params.append(pytest.param(kernel, id=name, marks=mark))
    return params


VARIANTS = _variants()


def _ragged(lengths: list[int], q_heads: int, kv_heads: int, width: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    bounds = torch.tensor([0, *lengths]).cumsum(0)
    qkv = torch.randn(int(bounds[-1]), q_heads + 2 * kv_heads, width, generator=generator) * 2
    return qkv.bfloat16(), bounds


def _per_sequence(qkv, bounds, q_heads, kv_heads, dtype):
    """PyTorch's attention one sequence at a time in ``dtype``."""
    parts = []
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        q, k, v = qkv[start:stop].to(dtype).transpose(0, 1)[None].split([q_heads, kv_heads, kv_heads], dim=1)
        context = F.scaled_dot_product_attention(q, k, v, enable_gqa=q_heads != kv_heads)
        parts.append(context[0].transpose(0, 1).reshape(stop - start, -1).float())
    return torch.cat(parts)


#: tile edges (16 queries, 32 keys), single tokens, and more than one block of everything
LENGTHS = [1, 2, 15, 16, 17, 31, 32, 33, 64, 100, 255, 300, 513]


@pytest.mark.parametrize("variant", list(cpu_attention.VARIANTS))
def test_where_the_cpu_has_the_instructions_and_a_compiler_each_build_serves(variant, caplog):
    loader = cpu_attention.VARIANTS[variant]
    if loader.unavailable_reason() is not None or native.compiler() is None:
        pytest.skip(f"no {variant} CPU with a C compiler: {loader.unavailable_reason() or 'no compiler'}")
    loader.reset()
    with caplog.at_level(logging.INFO, logger="qwembed.cpu_attention"):
        assert loader.get() is not None, caplog.text
    assert f"attention kernel ({variant}) cpu_attention-" in caplog.text
    loader.reset()


def test_amx_cpus_serve_the_amx_build():
    has_amx = native.unsupported_machine(cpu_attention.VARIANTS["AMX"].cpu_flags) is None
    assert (cpu_attention.KERNEL is cpu_attention.VARIANTS["AMX"]) == has_amx


@pytest.mark.parametrize("kernel", VARIANTS)
@pytest.mark.parametrize(("width", "q_heads", "kv_heads"), [(32, 12, 12), (64, 4, 4), (64, 16, 8)])
def test_the_kernel_is_as_close_to_float32_as_pytorchs_bf16_kernel(kernel, width, q_heads, kv_heads):
    qkv, bounds = _ragged(LENGTHS, q_heads, kv_heads, width)
    got = kernel.attend(qkv, bounds, q_heads, kv_heads)
    assert got.dtype == torch.bfloat16 and got.shape == (len(qkv), q_heads * width)
    exact = _per_sequence(qkv, bounds, q_heads, kv_heads, torch.float32)
    pytorch_bf16 = _per_sequence(qkv, bounds, q_heads, kv_heads, torch.bfloat16)
    ours = (got.float() - exact).abs()
    theirs = (pytorch_bf16 - exact).abs()
    assert ours.max() <= 1.25 * theirs.max() + 1e-3
    assert ours.mean() <= 1.25 * theirs.mean() + 1e-4
    # every sequence sees only itself: changing one sequence leaves the others' outputs alone
    changed = qkv.clone()
    changed[bounds[3] : bounds[4]] = 0
    again = kernel.attend(changed, bounds, q_heads, kv_heads)
    outside = torch.ones(len(qkv), dtype=torch.bool)
    outside[bounds[3] : bounds[4]] = False
    assert torch.equal(again[outside], got[outside])


@pytest.mark.parametrize("kernel", VARIANTS)
@pytest.mark.parametrize("width", [32, 64])
def test_widely_spread_scores_keep_their_largest_terms(kernel, width):
    """Scores hundreds apart: most probabilities are far below float32's normal range (the kernel
    flushes them to zero) and each row is dominated by a few keys."""
    qkv, bounds = _ragged([40, 256], 2, 2, width, seed=2)
    qkv = (qkv.float() * 12).bfloat16()
    got = kernel.attend(qkv, bounds, 2, 2).float()
    exact = _per_sequence(qkv, bounds, 2, 2, torch.float32)
    pytorch_bf16 = _per_sequence(qkv, bounds, 2, 2, torch.bfloat16)
    assert got.isfinite().all()
    assert (got - exact).abs().max() <= 1.25 * (pytorch_bf16 - exact).abs().max() + 1e-2


@pytest.mark.parametrize("kernel", VARIANTS)
def test_a_scale_other_than_the_default_is_applied(kernel):
    qkv, bounds = _ragged([47], 2, 2, 32)
    q, k, v = qkv.float().transpose(0, 1)[None].split([2, 2, 2], dim=1)
    got = kernel.attend(qkv, bounds, 2, 2, scale=0.5)
    expected = F.scaled_dot_product_attention(q, k, v, scale=0.5)[0].transpose(0, 1).reshape(47, -1)
    assert (got.float() - expected).abs().max() < 0.05


@pytest.mark.parametrize("kernel", VARIANTS)
def test_threads_split_the_work_without_changing_a_bit(kernel):
    qkv, bounds = _ragged(LENGTHS, 12, 12, 32, seed=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel.attend(qkv, bounds, 12, 12)
        torch.set_num_threads(3)
        three = kernel.attend(qkv, bounds, 12, 12)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)


class _RecordingKernel:
    def __init__(self):
        self.calls = 0

    def attend(self, qkv, bounds, q_heads, kv_heads, scale=None):
        self.calls += 1
        return torch.zeros(len(qkv), q_heads * qkv.shape[-1], dtype=qkv.dtype)


@pytest.mark.parametrize(
    ("dtype", "width", "causal", "taken"),
    [
        (torch.bfloat16, 32, False, True),
        (torch.bfloat16, 64, False, True),
        (torch.float32, 32, False, False),  # exact mode stays exact
        (torch.bfloat16, 32, True, False),  # decoders (Qwen3) keep PyTorch's causal kernel
        (torch.bfloat16, 128, False, False),  # a head width the kernel does not handle
    ],
)
def test_grouped_attention_hands_the_kernel_only_what_it_handles(dtype, width, causal, taken):
    recording = _RecordingKernel()
    cpu_attention.KERNEL.set(recording)  # stands in for a built kernel, on any CPU
    lengths = [20, 9, 9, 3]
    batch = PackedBatch.of([[1] * n for n in lengths], rows=4, longest=20, causal=causal)
    qkv = torch.randn(sum(lengths), 6, width).to(dtype)
    out = grouped_attention(batch, qkv, 2, 2, causal=causal)
    assert recording.calls == int(taken)
    assert out.shape == (sum(lengths), 2 * width)
    assert out.eq(0).all() == taken


def test_the_switch_keeps_pytorchs_kernel_and_says_so(monkeypatch, caplog):
    monkeypatch.setenv(cpu_attention.ENV_SWITCH, "0")
    with caplog.at_level(logging.INFO, logger="qwembed.cpu_attention"):
        assert cpu_attention.kernel() is None
    assert f"{cpu_attention.ENV_SWITCH}=0" in caplog.text
    assert cpu_attention.kernel_for(torch.zeros(4, 3, 32, dtype=torch.bfloat16), causal=False) is None


def test_a_failed_build_keeps_pytorchs_kernel_and_says_so(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(native, "unsupported_machine", lambda flags: None)  # as if the CPU could
    monkeypatch.setattr(native, "compiler", lambda: "false")  # a compiler that always fails
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="qwembed.cpu_attention"):
        assert cpu_attention.kernel() is None
    assert "failed to build or load" in caplog.text


@needs_kernel
def test_a_failed_check_keeps_pytorchs_kernel_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(cpu_attention.KERNEL, "check", lambda kernel: 1.0)
    with caplog.at_level(logging.WARNING, logger="qwembed.cpu_attention"):
        assert cpu_attention.kernel() is None
    assert "is off by" in caplog.text


@needs_kernel
def test_minilm_embeds_the_same_with_the_kernel_as_with_pytorchs(minilm_dir):
    embedder = Embedder.load("minilm", device="cpu", dtype="bfloat16")
    texts = ["x", "如何申请信用卡的分期付款？", "a much longer text about loans and repayments " * 20]
    texts += [f"question {i}: " + "how do I repay my card " * (i % 5) for i in range(12)]
    kernel, calls = cpu_attention.kernel(), []

    class Counting:
        def attend(self, *args, **kwargs):
            calls.append(1)
            return kernel.attend(*args, **kwargs)

    cpu_attention.KERNEL.set(Counting())
    with_kernel = embedder.embed(texts)
    assert calls  # every layer's attention went through it
    cpu_attention.KERNEL.set(None)
    with_pytorch = embedder.embed(texts)
    assert np.min(np.sum(with_kernel * with_pytorch, axis=1)) > 0.9999


@needs_kernel
def test_the_attention_benchmark_times_both_kernels_on_the_same_inputs(monkeypatch):
    from conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import bench_attention

    row = bench_attention.case([40, 17, 3], 2, 32, cpu_attention.kernel(), repeats=2)
    assert row["sequences"] == 3
    assert row["pytorch"]["x_pytorch_per_round_median"] == 1.0
    for engine in ("pytorch", "our kernel"):
        assert row[engine]["ms"] > 0 and row[engine]["gflops"] > 0
        assert row[engine]["max_abs_diff_to_float32"] < 0.05
