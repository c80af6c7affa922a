"""Our CPU attention kernel, in each build this machine runs (AMX, AVX512-BF16), equals PyTorch's
attention — bidirectional, and causal where the build handles it (Qwen3) — serves only what it
handles, and where it cannot serve (neither instruction set, no compiler, a failed build or
check, the switch) PyTorch's kernel stays and the log says why."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from native_fixtures import Counting, assert_a_failed_check_falls_back, fresh_state, loaded_or_reason
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


def _per_sequence(qkv, bounds, q_heads, kv_heads, dtype, causal=False):
    """PyTorch's attention one sequence at a time in ``dtype``."""
    parts = []
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        q, k, v = qkv[start:stop].to(dtype).transpose(0, 1)[None].split([q_heads, kv_heads, kv_heads], dim=1)
        context = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q_heads != kv_heads)
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


#: (head width, query heads, key/value heads, causal): BERT-small, -base with and without grouped
#: keys, Qwen3-Embedding-0.6B's heads (causal, 16 / 8 of 128), and more grouping either way
SHAPES = [
    (32, 12, 12, False),
    (64, 4, 4, False),
    (64, 16, 8, False),
    (128, 16, 8, True),
    (128, 4, 1, True),
    (128, 8, 2, False),
    (32, 4, 4, True),
]


@pytest.mark.parametrize("kernel", VARIANTS)
@pytest.mark.parametrize(("width", "q_heads", "kv_heads", "causal"), SHAPES)
def test_the_kernel_is_as_close_to_float32_as_pytorchs_bf16_kernel(kernel, width, q_heads, kv_heads, causal):
    qkv, bounds = _ragged(LENGTHS, q_heads, kv_heads, width)
    if not kernel.handles(width, causal):  # the AMX build: refused, not computed wrongly
        with pytest.raises(ValueError, match="unsupported attention"):
            kernel.attend(qkv, bounds, q_heads, kv_heads, causal=causal)
        return
    got = kernel.attend(qkv, bounds, q_heads, kv_heads, causal=causal)
    assert got.dtype == torch.bfloat16 and got.shape == (len(qkv), q_heads * width)
    exact = _per_sequence(qkv, bounds, q_heads, kv_heads, torch.float32, causal)
    pytorch_bf16 = _per_sequence(qkv, bounds, q_heads, kv_heads, torch.bfloat16, causal)
    ours = (got.float() - exact).abs()
    theirs = (pytorch_bf16 - exact).abs()
    assert ours.max() <= 1.25 * theirs.max() + 1e-3
    assert ours.mean() <= 1.25 * theirs.mean() + 1e-4
    # every sequence sees only itself: changing one sequence leaves the others' outputs alone
    changed = qkv.clone()
    changed[bounds[3] : bounds[4]] = 0
    again = kernel.attend(changed, bounds, q_heads, kv_heads, causal=causal)
    outside = torch.ones(len(qkv), dtype=torch.bool)
    outside[bounds[3] : bounds[4]] = False
    assert torch.equal(again[outside], got[outside])


@pytest.mark.parametrize("kernel", VARIANTS)
def test_causal_tokens_see_nothing_after_themselves(kernel):
    """Changing a sequence's tokens from position 200 on leaves its first 200 outputs alone (and
    changes the rest); bidirectionally, every output moves."""
    if not kernel.handles(128, True):
        pytest.skip("this build leaves causal attention to PyTorch")
    qkv, bounds = _ragged([513, 300], 16, 8, 128, seed=3)
    got = kernel.attend(qkv, bounds, 16, 8, causal=True)
    changed = qkv.clone()
    changed[200:513] = torch.randn(313, 32, 128).bfloat16()
    again = kernel.attend(changed, bounds, 16, 8, causal=True)
    assert torch.equal(again[:200], got[:200]) and torch.equal(again[513:], got[513:])
    assert not torch.equal(again[200:513], got[200:513])
    bidirectional = kernel.attend(changed, bounds, 16, 8) != kernel.attend(qkv, bounds, 16, 8)
    assert bidirectional[:200].any(dim=1).all()


@pytest.mark.parametrize("kernel", VARIANTS)
@pytest.mark.parametrize(("width", "causal"), [(32, False), (64, False), (128, True)])
def test_widely_spread_scores_keep_their_largest_terms(kernel, width, causal):
    """Scores hundreds apart: most probabilities are far below float32's normal range (the kernel
    flushes them to zero) and each row is dominated by a few keys."""
    if not kernel.handles(width, causal):
        pytest.skip(f"this build leaves heads of {width} (causal={causal}) to PyTorch")
    qkv, bounds = _ragged([40, 256], 2, 2, width, seed=2)
    qkv = (qkv.float() * 12).bfloat16()
    got = kernel.attend(qkv, bounds, 2, 2, causal=causal).float()
    exact = _per_sequence(qkv, bounds, 2, 2, torch.float32, causal)
    pytorch_bf16 = _per_sequence(qkv, bounds, 2, 2, torch.bfloat16, causal)
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
@pytest.mark.parametrize(
    ("lengths", "q_heads", "kv_heads", "width", "causal"),
    [(LENGTHS, 12, 12, 32, False), ([700, 300, 90, 20, 20, 3], 16, 8, 128, True)],
)
def test_threads_split_the_work_without_changing_a_bit(kernel, lengths, q_heads, kv_heads, width, causal):
    """The items go to threads by cost (unequal lengths: the long sequence's alone on one thread
    at 2 and 3 threads), and each is computed the same on any of them."""
    if not kernel.handles(width, causal):
        pytest.skip(f"this build leaves heads of {width} (causal={causal}) to PyTorch")
    qkv, bounds = _ragged(lengths, q_heads, kv_heads, width, seed=1)
    threads = torch.get_num_threads()
    outputs = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            outputs.append(kernel.attend(qkv, bounds, q_heads, kv_heads, causal=causal))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


class _RecordingKernel:
    """Stands in for a built kernel that handles what ``handled`` lists, as (width, causal)."""

    def __init__(self, handled):
        self.handled, self.calls = handled, 0

    def handles(self, width, causal):
        return (width, causal) in self.handled

    def attend(self, qkv, bounds, q_heads, kv_heads, scale=None, *, causal=False):
        self.calls += 1
        return torch.zeros(len(qkv), q_heads * qkv.shape[-1], dtype=qkv.dtype)


AMX_BUILD = {(32, False), (64, False)}
VECTOR_BUILD = {(width, causal) for width in (32, 64, 128) for causal in (False, True)}


@pytest.mark.parametrize(
    ("build", "dtype", "width", "causal", "taken"),
    [
        (AMX_BUILD, torch.bfloat16, 32, False, True),
        (AMX_BUILD, torch.bfloat16, 64, False, True),
        (AMX_BUILD, torch.float32, 32, False, False),  # exact mode stays exact
        (AMX_BUILD, torch.bfloat16, 128, True, False),  # Qwen3 keeps PyTorch's kernel on AMX CPUs
        (VECTOR_BUILD, torch.bfloat16, 128, True, True),  # and takes ours without AMX
        (VECTOR_BUILD, torch.bfloat16, 32, True, True),
        (VECTOR_BUILD, torch.float32, 128, True, False),
        (VECTOR_BUILD, torch.bfloat16, 16, True, False),  # a head width no build handles
    ],
)
def test_grouped_attention_hands_the_kernel_only_what_it_handles(build, dtype, width, causal, taken):
    recording = _RecordingKernel(build)
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
    assert_a_failed_check_falls_back(cpu_attention.KERNEL, "qwembed.cpu_attention", monkeypatch, caplog)


@needs_kernel
def test_minilm_embeds_the_same_with_the_kernel_as_with_pytorchs(minilm_dir):
    embedder = Embedder.load("minilm", device="cpu", dtype="bfloat16")
    texts = ["x", "如何申请信用卡的分期付款？", "a much longer text about loans and repayments " * 20]
    texts += [f"question {i}: " + "how do I repay my card " * (i % 5) for i in range(12)]
    counting = Counting(cpu_attention.kernel(), "attend")
    cpu_attention.KERNEL.set(counting)
    with_kernel = embedder.embed(texts)
    assert counting.calls  # every layer's attention went through it
    cpu_attention.KERNEL.set(None)
    with_pytorch = embedder.embed(texts)
    assert np.min(np.sum(with_kernel * with_pytorch, axis=1)) > 0.9999


@needs_kernel
def test_qwen3_embeds_the_same_with_the_kernel_as_with_pytorchs(qwen3_128_dir):
    if not _KERNEL.handles(128, True):
        pytest.skip("this build leaves Qwen3's causal attention to PyTorch")
    embedder = Embedder.load(str(qwen3_128_dir), device="cpu", dtype="bfloat16")
    texts = ["x", "如何申请信用卡的分期付款？", "a much longer text about loans and repayments " * 40]
    texts += [f"question {i}: " + "how do I repay my card " * (i % 7) for i in range(12)]
    counting = Counting(cpu_attention.kernel(), "attend")
    cpu_attention.KERNEL.set(counting)
    with_kernel = embedder.embed(texts)
    # every layer's attention went through it, causal
    assert counting.calls and all(options["causal"] for _, options in counting.calls)
    cpu_attention.KERNEL.set(None)
    with_pytorch = embedder.embed(texts)
    assert np.min(np.sum(with_kernel * with_pytorch, axis=1)) > 0.9999


@needs_kernel
def test_the_attention_benchmark_times_both_kernels_on_the_same_inputs(monkeypatch):
    from conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import bench_attention

    kernel = cpu_attention.kernel()
    rows = [bench_attention.case([40, 17, 3], 2, 32, kernel, repeats=2)]
    if kernel.handles(128, True):
        rows.append(bench_attention.case([40, 17, 3], 4, 128, kernel, repeats=2, kv_heads=2, causal=True))
    for row in rows:
        assert row["sequences"] == 3
        assert row["pytorch"]["x_pytorch_per_round_median"] == 1.0
        for engine in ("pytorch", "our kernel"):
            assert row[engine]["ms"] > 0 and row[engine]["gflops"] > 0
            assert row[engine]["max_abs_diff_to_float32"] < 0.05
